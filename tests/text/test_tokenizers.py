"""KerasHub tokenizers learned on the training split, and the plain-Python reference
tokenizer that must agree with them id for id (what an app ports)."""

import numpy as np
import pytest

from kdl.data import DataError
from kdl.data.tokenizers import fit_tokenizer, tokenize, tokenizer_from_spec, tokenizer_spec
from pipelines.tokenizer_reference import ReferenceTokenizer
from tests.text.conftest import HARD_STRINGS, fuzz_corpus

TRAIN = [
    "the food was not good", "never bad, always great!", "Crème brûlée était délicieuse",
    "東京の天気は晴れです", "I love it 😀 so much", "The SERVICE was slow... but friendly",
] * 5 + fuzz_corpus(200, seed=1)


def _agree(tok, strings):
    spec = tokenizer_spec(tok)
    ref = ReferenceTokenizer(spec, spec.get("vocabulary", []), tok.proto)
    got = tokenize(tok, strings)
    mismatches = [(s, list(g), ref.encode(s)) for s, g in zip(strings, got, strict=True)
                  if list(g) != ref.encode(s)]
    assert not mismatches, mismatches[:3]
    return got


@pytest.mark.once
@pytest.mark.parametrize("options", [
    {"lowercase": True, "strip_accents": True},
    {"lowercase": False, "strip_accents": False, "start_token": "[CLS]", "end_token": "[SEP]"},
])
def test_reference_wordpiece_agrees_with_kerashub(options):
    tok = fit_tokenizer(TRAIN, vocab_size=400, sequence_length=24, **options)
    ids = _agree(tok, HARD_STRINGS + fuzz_corpus(300, seed=2))
    vocab = tok.vocabulary()
    assert vocab[0] == "[PAD]" and len(vocab) > 100  # learned, not just the specials
    unk = vocab.index("[UNK]")
    assert (ids != unk).sum() > 0.3 * (ids != 0).sum()  # real pieces, not all unknown
    long = tokenize(tok, ["x" * 150])[0]  # a word over 100 bytes is one unknown token
    assert unk in long[:2]


@pytest.mark.once
@pytest.mark.parametrize("lowercase", [False, True])  # nmt_nfkc / nmt_nfkc_cf charsmaps
def test_reference_sentencepiece_agrees_with_kerashub(lowercase):
    """The plain-Python unigram SentencePiece (from the `.model` file alone) gives the
    ids of the SentencePiece runtime under KerasHub's tokenizer, id for id."""
    tok = fit_tokenizer(TRAIN, kind="sentencepiece", vocab_size=300, sequence_length=24,
                        lowercase=lowercase, start_token="<s>", end_token="</s>")
    strings = HARD_STRINGS + fuzz_corpus(300, seed=4) + ["  a  b ", "\t x\n", "ＡＢＣ ﬁ ½"]
    ids = _agree(tok, strings)
    assert (ids == 1).sum() < 0.2 * (ids > 3).sum()  # mostly real pieces, some unknown
    assert (ids == 1).any()  # ... and the unknown path is exercised


@pytest.mark.once
def test_reference_bytes_agrees_with_kerashub():
    tok = fit_tokenizer(TRAIN, kind="bytes", sequence_length=40)
    _agree(tok, HARD_STRINGS + fuzz_corpus(200, seed=3))


@pytest.mark.once
def test_reference_disagrees_when_the_contract_is_wrong():
    """The agreement check can fail: a contract that leaves out a step gives other ids."""
    tok = fit_tokenizer(TRAIN, vocab_size=400, sequence_length=16)
    spec = tokenizer_spec(tok)
    spec["normalization"] = [s for s in spec["normalization"] if s["step"] != "lowercase"]
    ref = ReferenceTokenizer(spec, spec["vocabulary"])
    assert ref.encode("The FOOD") != list(tokenize(tok, ["The FOOD"])[0])


@pytest.mark.once
def test_spec_round_trip_and_training_split_only():
    tok = fit_tokenizer(["alpha beta", "beta gamma"] * 3, vocab_size=50, sequence_length=6)
    assert "delta" not in tok.vocabulary()  # only what the training texts hold
    again = tokenizer_from_spec(tokenizer_spec(tok))
    texts = ["alpha gamma delta", "beta"]
    np.testing.assert_array_equal(tokenize(tok, texts), tokenize(again, texts))


@pytest.mark.once
def test_tokenizer_errors_are_data_errors():
    with pytest.raises(DataError, match="byte_pair"):
        fit_tokenizer(TRAIN, kind="byte_pair")
    with pytest.raises(DataError, match="kind"):
        fit_tokenizer(TRAIN, kind="chars")
    with pytest.raises(DataError, match="no room"):
        fit_tokenizer(TRAIN, sequence_length=2, start_token="[CLS]", end_token="[SEP]")
