"""KerasHub tokenizers learned on the training split, and the plain-Python reference
tokenizer that must agree with them id for id (what an app ports)."""

import json

import numpy as np
import pytest

from kdl.data import DataError
from kdl.data.byte_pair import learn_byte_pair
from kdl.data.tokenizers import fit_tokenizer, tokenize, tokenizer_from_spec, tokenizer_spec
from pipelines.tokenizer_reference import ReferenceTokenizer
from tests.text.conftest import HARD_STRINGS, fuzz_corpus

TRAIN = [
    "the food was not good", "never bad, always great!", "Crème brûlée était délicieuse",
    "東京の天気は晴れです", "I love it 😀 so much", "The SERVICE was slow... but friendly",
] * 5 + fuzz_corpus(200, seed=1)


# byte_pair: GPT-2 pre-split corners (contractions, digit runs, whitespace runs and the
# special spaces KerasHub handles by hand, its U+096C marker) on top of HARD_STRINGS
BPE_STRINGS = [
    "don't I'm we'll they're you've she'd it's DON'T", "12345 3.14 ٣٤٥ ½²", "a  b   c",
    "trailing ", "x \u00a0\u2009\u202f\u3000", "\u096c marker \u096c\u096c a\u096c",
    "  leading", "\n\n\n", "tab\t\tx", "\x0b v\x0b", "x\u00a0y z\u3000w", "'s 's'",
]


def _agree(tok, strings):
    spec = tokenizer_spec(tok)
    ref = ReferenceTokenizer(spec, spec.get("vocabulary", []), tok.proto,
                             spec.get("merges", []))
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


@pytest.fixture(scope="module")
def byte_pair_tok():
    return fit_tokenizer(TRAIN, kind="byte_pair", vocab_size=400, sequence_length=24)


@pytest.mark.once
@pytest.mark.parametrize("cased", [False, True])
def test_reference_byte_pair_agrees_with_kerashub(byte_pair_tok, cased):
    """The plain-Python byte-level BPE (pre-split regexes rebuilt from `unicodedata`,
    byte symbols, merges by rank) gives the ids of KerasHub's BytePairTokenizer."""
    tok = byte_pair_tok if not cased else fit_tokenizer(
        TRAIN, kind="byte_pair", vocab_size=400, sequence_length=24, lowercase=False,
        start_token="[CLS]", end_token="[SEP]")
    ids = _agree(tok, HARD_STRINGS + BPE_STRINGS + fuzz_corpus(200, seed=5 + cased))
    vocab = tok.vocabulary()
    assert vocab[:2] == ["[PAD]", "[UNK]"] and len(tok.merges) > 50
    assert (ids >= 5 + 256).sum() > 0.1 * (ids > 4).sum()  # merged tokens, not just bytes


@pytest.mark.once
def test_byte_pair_contract_without_a_step_disagrees(byte_pair_tok):
    strings = HARD_STRINGS + BPE_STRINGS
    ids = tokenize(byte_pair_tok, strings)
    for step in ("lowercase", "pre_split"):
        spec = tokenizer_spec(byte_pair_tok)
        spec["normalization"] = [s for s in spec["normalization"] if s["step"] != step]
        ref = ReferenceTokenizer(spec, spec["vocabulary"], merges=spec["merges"])
        assert any(ref.encode(t) != list(i) for t, i in zip(strings, ids, strict=True)), step


@pytest.mark.once
def test_byte_pair_from_a_local_gpt2_layout_directory(byte_pair_tok, tmp_path):
    """tokenizer.preset for byte_pair: a GPT-2-layout vocab.json (id 0 is not padding, an
    extra special token last) + merges.txt; the merges are used as they are, the tokens
    re-numbered after [PAD] ...; the reference still agrees, and a broken merge is refused."""
    learned = byte_pair_tok.vocabulary()[5:]  # byte symbols + merged tokens, no specials
    (tmp_path / "vocab.json").write_text(json.dumps(
        {t: i for i, t in enumerate(learned + ["<|endoftext|>"])}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{m}\n" for m in byte_pair_tok.merges), encoding="utf-8")
    tok = fit_tokenizer([], kind="byte_pair", preset=str(tmp_path), sequence_length=24)
    assert tok.vocabulary()[:5] == byte_pair_tok.vocabulary()[:5]
    assert tok.vocab_size == byte_pair_tok.vocab_size + 1  # + <|endoftext|>
    strings = HARD_STRINGS + BPE_STRINGS
    np.testing.assert_array_equal(_agree(tok, strings), tokenize(byte_pair_tok, strings))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nq zz\n", encoding="utf-8")
    with pytest.raises(DataError, match="merge 1 'q zz'"):
        fit_tokenizer([], kind="byte_pair", preset=str(tmp_path))


@pytest.mark.once
def test_byte_pair_merges_are_deterministic_and_learned_on_the_split():
    texts = ["low lower lowest", "newer wider", "the lowest newest"] * 4 + ["a b"]
    specials = ["[PAD]", "[UNK]"]
    vocab, merges = learn_byte_pair(texts, 300, specials, lowercase=True)
    assert (vocab, merges) == learn_byte_pair(texts[::-1], 300, specials, lowercase=True)
    assert vocab[:2] == specials and len(vocab) == 2 + 256 + len(set(
        "".join(m.split(" ")) for m in merges)) <= 300
    assert merges[0] == "w e"  # the most frequent pair (20 times)
    tie = ["cd", "ab", "cd", "ab"]  # "a b" and "c d" both twice: the smaller pair first
    assert learn_byte_pair(tie, 300, specials, False)[1] == ["a b", "c d"]
    assert "Ġlowest" in vocab and "Ġzebra" not in vocab
    assert "Ġb" not in vocab  # a pair seen once is not merged
    few, _ = learn_byte_pair(texts, 2 + 256 + 3, specials, lowercase=True)
    assert len(few) == 2 + 256 + 3  # stops at vocab_size
    with pytest.raises(DataError, match="vocab_size > 258"):
        learn_byte_pair(texts, 258, specials, lowercase=True)
    with pytest.raises(DataError, match="single byte symbol"):
        learn_byte_pair(texts, 300, ["[PAD]", "a"], lowercase=True)


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
    # byte_pair's round trip: the bundle test's golden ids come from tokenizer_from_spec


@pytest.mark.once
def test_tokenizer_errors_are_data_errors():
    with pytest.raises(DataError, match="vocab_size > 261"):
        fit_tokenizer(TRAIN, kind="byte_pair", vocab_size=200)
    with pytest.raises(DataError, match="kind"):
        fit_tokenizer(TRAIN, kind="chars")
    with pytest.raises(DataError, match="no room"):
        fit_tokenizer(TRAIN, sequence_length=2, start_token="[CLS]", end_token="[SEP]")
