"""Tokenizers for text datasets: KerasHub's, learned on the training split only.

`fit_tokenizer` builds a KerasHub tokenizer (WordPiece, SentencePiece, byte-level
BPE, bytes), learning the vocabulary with `compute_word_piece_vocabulary` /
`compute_sentence_piece_proto` / `kdl.data.byte_pair.learn_byte_pair` (KerasHub has
no BPE trainer) on the training texts, or loading it from a local KerasHub preset or
Hugging Face directory. `tokenize` runs it (and a `StartEndPacker`: optional start/end
tokens, truncation and padding on the right to `sequence_length`) in a
`tf.data` pipeline, which works on every Keras backend, and returns int32 ids.

`tokenizer_spec` describes the tokenizer completely (normalization steps in
order, vocabulary, unknown/special tokens, truncation, padding): the bundle's
contract carries it and `pipelines/tokenizer_reference.py` reimplements it in
plain Python, as an app does. Id 0 is always padding (models mask it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kdl.data import byte_pair
from kdl.data.core import DataError

KINDS = ("wordpiece", "sentencepiece", "byte_pair", "bytes")
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_BYTES_PER_WORD = 100  # KerasHub's FastWordpieceTokenizer: longer words -> unknown token


# Golden strings every text bundle carries besides real examples: accents, CJK, emoji
# (with ZWJ and variation selectors), punctuation runs, a word over the 100-byte WordPiece
# limit, the empty string, control and format characters, and (with a short
# sequence_length) text longer than the model takes.
HARD_STRINGS = [
    "", "Crème brûlée, naïve café — déjà vu!", "東京の天気は晴れ。你好，世界！",
    "I ❤️ it 😀👍🏽 👨‍👩‍👧", "wow?!?!... ---- ((()))", "x" * 120,
    "İstanbul STRASSE straße ﬁne Ｆｕｌｌ", "tab\there\nnew line zero\u200bwidth soft\u00adhyphen",
    " ".join(["the food was not good but the service was great"] * 12),
]


class TextTokenizer:
    """A KerasHub tokenizer plus packing: `[start] + ids[:room] + [end] + padding`.

    Attributes: `tokenizer` (the KerasHub layer, ragged output), `kind`,
    `sequence_length`, `pad_id`, `start_id`/`end_id` (None: not added), and the
    options it was built with (`options`, recorded in the spec).
    """

    def __init__(self, tokenizer, kind: str, sequence_length: int, *, start_token=None,
                 end_token=None, options: dict[str, Any] | None = None, proto: bytes = b"",
                 merges: list[str] | None = None):
        self.tokenizer, self.kind, self.sequence_length = tokenizer, kind, sequence_length
        self.options = dict(options or {})
        self.proto = proto
        self.merges = list(merges or [])
        self._fn = None  # tf_function's, traced on first use
        self.start_token, self.end_token = start_token, end_token
        ids = self._ids(start_token, end_token)
        self.start_id, self.end_id = ids
        self.pad_id = 0
        room = sequence_length - sum(i is not None for i in ids)
        if room < 1:
            raise DataError(f"tokenizer.sequence_length={sequence_length} leaves no room for "
                            "tokens after the start/end tokens")

    def _ids(self, *tokens):
        out = []
        for t in tokens:
            if t is None:
                out.append(None)
            elif self.kind == "bytes":
                raise DataError("tokenizer kind 'bytes' has no start/end tokens")
            else:
                try:
                    out.append(int(self.tokenizer.token_to_id(t)))
                except (ValueError, KeyError):
                    raise DataError(f"tokenizer: start/end token {t!r} is not in the "
                                    "vocabulary") from None
        return out

    @property
    def vocab_size(self) -> int:
        return 256 if self.kind == "bytes" else int(self.tokenizer.vocabulary_size())

    def vocabulary(self) -> list[str]:
        if self.kind == "byte_pair":
            ids = self.tokenizer.vocabulary
            return sorted(ids, key=ids.get)
        return [] if self.kind == "bytes" else list(self.tokenizer.get_vocabulary())

    def tf_function(self):
        """`strings (batch,) -> int32 ids (batch, sequence_length)`, for `tf.data.map`:
        one `tf.function`, traced once and reused by every pipeline (KerasHub's BPE graph
        takes seconds to trace)."""
        import keras_hub
        import tensorflow as tf

        if self._fn is not None:
            return self._fn
        packer = keras_hub.layers.StartEndPacker(
            self.sequence_length, start_value=self.start_id, end_value=self.end_id,
            pad_value=self.pad_id, dtype="int32")

        @tf.autograph.experimental.do_not_convert
        def fn(texts):
            if self.kind == "byte_pair" and self.options.get("lowercase"):
                texts = byte_pair.case_fold(texts)
            ids = self.tokenizer(texts)
            return tf.cast(packer(ids), tf.int32)

        self._fn = tf.function(fn, input_signature=[tf.TensorSpec([None], tf.string)],
                               autograph=False)
        return self._fn


def _learn_wordpiece(texts, vocab_size, lowercase, strip_accents, specials):
    import keras_hub
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(list(texts)).batch(1000)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        ds, vocab_size, lowercase=lowercase, strip_accents=strip_accents,
        reserved_tokens=specials)


def _from_preset(preset: str, sequence_length: int, start_token, end_token):
    """A WordPiece vocabulary from a local HF directory (`vocab.txt`) or KerasHub preset."""
    import keras_hub

    p = Path(preset).expanduser()
    if not p.is_dir():
        raise DataError(f"tokenizer.preset {preset!r} is not a local directory (a KerasHub "
                        "preset or a Hugging Face checkpoint with vocab.txt)")
    if (p / "vocab.txt").is_file():  # Hugging Face BERT layout
        cfg_file = p / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        lower = bool(cfg.get("do_lower_case", True))
        strip = cfg.get("strip_accents")
        options = {"lowercase": lower, "strip_accents": lower if strip is None else bool(strip)}
        vocab = [line.rstrip("\n") for line in
                 (p / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    else:
        try:
            hub = keras_hub.tokenizers.Tokenizer.from_preset(str(p))
        except Exception as e:
            raise DataError(f"tokenizer.preset {preset!r}: KerasHub cannot load a tokenizer "
                            f"from it ({type(e).__name__}: {e})") from None
        if not isinstance(hub, keras_hub.tokenizers.WordPieceTokenizer):
            raise DataError(f"tokenizer.preset {preset!r} holds a {type(hub).__name__}; "
                            "presets are supported for WordPiece (BERT-family) tokenizers")
        options = {"lowercase": bool(hub.lowercase), "strip_accents": bool(hub.strip_accents)}
        vocab = list(hub.get_vocabulary())
    if vocab[:1] != ["[PAD]"]:
        raise DataError(f"tokenizer.preset {preset!r}: id 0 must be the padding token "
                        f"'[PAD]' (found {vocab[:1]})")
    tok = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab, oov_token="[UNK]",
                                                  dtype="int32", **options)
    return TextTokenizer(tok, "wordpiece", sequence_length, start_token=start_token,
                         end_token=end_token, options={**options, "preset": str(p)})


def _byte_pair(vocab, merges, sequence_length, start_token, end_token, options):
    import keras_hub

    tok = keras_hub.tokenizers.BytePairTokenizer(
        vocabulary={t: i for i, t in enumerate(vocab)}, merges=merges, dtype="int32")
    return TextTokenizer(tok, "byte_pair", sequence_length, start_token=start_token,
                         end_token=end_token, options=options, merges=merges)


def fit_tokenizer(train_texts, *, kind: str = "wordpiece", vocab_size: int = 4000,
                  lowercase: bool = True, strip_accents: bool = True,
                  sequence_length: int = 64, special_tokens: list[str] | None = None,
                  start_token: str | None = None, end_token: str | None = None,
                  preset: str | None = None) -> TextTokenizer:
    """A KerasHub tokenizer whose vocabulary is learned on `train_texts` only.

    Args:
        train_texts: the training split's strings.
        kind: "wordpiece", "sentencepiece", "bytes" (UTF-8 bytes, no vocabulary)
            or "byte_pair" (GPT-2-style byte-level BPE, merges learned by
            `kdl.data.byte_pair`).
        vocab_size: the most tokens to learn (WordPiece may learn fewer).
        lowercase, strip_accents: normalization (`strip_accents`: WordPiece only).
        sequence_length: ids per text: truncated on the right, padded on the right
            with id 0.
        special_tokens: reserved WordPiece / byte_pair tokens, `[PAD]` first (id 0);
            default `[PAD] [UNK] [CLS] [SEP] [MASK]`.
        start_token, end_token: added around each text (e.g. `[CLS]`, `[SEP]` for BERT).
        preset: a local KerasHub preset or Hugging Face directory whose vocabulary
            (and case handling) is used instead of learning one; for byte_pair a
            GPT-2 / RoBERTa `vocab.json` + `merges.txt` directory (`load_byte_pair`).
    """
    import keras_hub

    if kind not in KINDS:
        raise DataError(f"tokenizer.kind {kind!r} is not one of {', '.join(KINDS)}")
    if sequence_length < 1 or vocab_size < 8:
        raise DataError(f"tokenizer: sequence_length must be >= 1 and vocab_size >= 8 (got "
                        f"{sequence_length} and {vocab_size})")
    texts = [str(t) for t in train_texts]
    if preset and kind not in ("wordpiece", "byte_pair"):
        raise DataError("tokenizer.preset loads WordPiece or byte_pair vocabularies: set "
                        "tokenizer.kind=wordpiece or byte_pair")
    if kind == "byte_pair":
        specials = list(special_tokens or WORDPIECE_SPECIALS)
        if specials[0] != "[PAD]":
            raise DataError(f"tokenizer.special_tokens must start with '[PAD]' (id 0); got "
                            f"{specials}")
        options = {"lowercase": lowercase, "special_tokens": specials}
        if preset:
            vocab, merges = byte_pair.load_byte_pair(preset, specials)
            options["preset"] = str(preset)
        else:
            vocab, merges = byte_pair.learn_byte_pair(texts, vocab_size, specials, lowercase)
        return _byte_pair(vocab, merges, sequence_length, start_token, end_token, options)
    if preset:
        return _from_preset(preset, sequence_length, start_token, end_token)
    if kind == "bytes":
        tok = keras_hub.tokenizers.ByteTokenizer(lowercase=lowercase, dtype="int32")
        return TextTokenizer(tok, kind, sequence_length, options={"lowercase": lowercase})
    if kind == "sentencepiece":
        import tensorflow as tf

        try:
            proto = keras_hub.tokenizers.compute_sentence_piece_proto(
                tf.data.Dataset.from_tensor_slices(texts), vocab_size, lowercase=lowercase)
        except RuntimeError as e:  # e.g. "Vocabulary size too high (100) ... <= 81"
            raise DataError(f"tokenizer: SentencePiece cannot learn vocab_size={vocab_size} "
                            f"from the training texts: {str(e).split('] ')[-1]}") from None
        tok = keras_hub.tokenizers.SentencePieceTokenizer(proto=proto, dtype="int32")
        return TextTokenizer(tok, kind, sequence_length, start_token=start_token,
                             end_token=end_token, options={"lowercase": lowercase}, proto=proto)
    specials = list(special_tokens or WORDPIECE_SPECIALS)
    if specials[0] != "[PAD]" or "[UNK]" not in specials:
        raise DataError(f"tokenizer.special_tokens must start with '[PAD]' (id 0) and hold "
                        f"'[UNK]'; got {specials}")
    vocab = _learn_wordpiece(texts, vocab_size, lowercase, strip_accents, specials)
    tok = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocab, lowercase=lowercase, strip_accents=strip_accents, oov_token="[UNK]",
        dtype="int32")
    return TextTokenizer(tok, kind, sequence_length, start_token=start_token,
                         end_token=end_token,
                         options={"lowercase": lowercase, "strip_accents": strip_accents,
                                  "special_tokens": specials})


def tokenize(tok: TextTokenizer, texts, batch_size: int = 512) -> np.ndarray:
    """Token ids `(n, sequence_length)` int32 of `texts`, through a tf.data pipeline."""
    import tensorflow as tf

    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, tok.sequence_length), "int32")
    ds = (tf.data.Dataset.from_tensor_slices(texts).batch(batch_size)
          .map(tok.tf_function(), num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    return np.concatenate([b.numpy() for b in ds]).astype("int32")


BYTE_PAIR_STEPS = [
    {"step": "pre_split", "how": "KerasHub's GPT-2 pre-split, the RE2 patterns in "
     "pre_split_patterns in order (RE2: \\s is [\\t\\n\\f\\r ] only, \\p{L} letters, "
     "\\p{N} numbers, $ the end of the text, leftmost-first alternation): "
     "mark_before_word (replace all) -> '\u096c\\1\\2'; mark_at_end -> '\\1\u096c'; "
     "then split keeping every match and the text between matches (split); then split each "
     "piece the same way with split_last_space; drop empty pieces and pieces that are just "
     "the marker U+096C"},
    {"step": "byte_to_unicode", "how": "per word, its UTF-8 bytes, each written as the "
     "symbol byte_to_unicode[byte] (GPT-2: bytes 33-126, 161-172, 174-255 are their own "
     "code point; the other 68, in increasing order, U+0100 on)"},
    {"step": "byte_pair", "how": "per word, repeatedly merge the leftmost adjacent symbol "
     "pair with the lowest rank (its line in merges_file, '#version' lines skipped) into "
     "one symbol, until no adjacent pair is in merges_file; id = vocabulary_file[symbol] "
     "(vocab.json, token -> id; every byte symbol and merge result is in it)"},
]


def normalization_steps(tok: TextTokenizer) -> list[dict[str, Any]]:
    """What the tokenizer does to a string, in order (the contract's words)."""
    o = tok.options
    if tok.kind in ("bytes", "byte_pair"):
        steps = []
        if o.get("lowercase"):
            steps.append({"step": "lowercase", "how": "Unicode NFKC_Casefold: NFKC, full case "
                          "folding, NFKC, drop default-ignorable code points"})
        if tok.kind == "bytes":
            return steps + [{"step": "bytes", "how": "UTF-8 bytes of the string, id = byte "
                             "value"}]
        return steps + BYTE_PAIR_STEPS
    if tok.kind == "sentencepiece":
        return [{"step": "sentencepiece", "how": "the SentencePiece model file (unigram; "
                 f"normalization {'nmt_nfkc_cf' if o.get('lowercase') else 'nmt_nfkc'})"}]
    steps = [{"step": "split_cjk", "how": "a space before and after every CJK ideograph"}]
    if o.get("strip_accents"):
        steps.append({"step": "strip_accents", "how": "Unicode NFD, then drop every "
                      "nonspacing mark (category Mn)"})
    steps.append({"step": "split", "how": "split at ASCII whitespace [ \\t\\n\\r\\f] and "
                  "control/format characters (categories Cc, Cf), dropped; and at "
                  "punctuation (ASCII !-/ :-@ [-` {-~ and categories P*) and CJK ideographs, "
                  "kept as words of their own"})
    if o.get("lowercase"):
        steps.append({"step": "lowercase", "how": "per word, Unicode NFKC_Casefold: NFKC, full "
                      "case folding, NFKC, drop default-ignorable code points"})
    steps.append({"step": "wordpiece", "how": "per word, greedy longest match first from the "
                  "word's start; later pieces carry the prefix '##'; a word longer than "
                  f"{MAX_BYTES_PER_WORD} UTF-8 bytes, or one that cannot be matched to the end, "
                  "becomes the unknown token"})
    return steps


def tokenizer_spec(tok: TextTokenizer) -> dict[str, Any]:
    """A JSON-able description of `tok` (the bundle's `tokenizer` block + vocabulary)."""
    o = tok.options
    spec: dict[str, Any] = {
        "kind": tok.kind,
        "normalization": normalization_steps(tok),
        "lowercase": bool(o.get("lowercase", False)),
        "strip_accents": bool(o.get("strip_accents", False)),
        "vocab_size": tok.vocab_size,
        "sequence_length": int(tok.sequence_length),
        "pad_id": tok.pad_id,
        "start_token": tok.start_token, "start_id": tok.start_id,
        "end_token": tok.end_token, "end_id": tok.end_id,
        "truncation": "right: keep the first sequence_length tokens (counting start/end)",
        "padding": "right, with pad_id, to sequence_length",
    }
    if tok.kind == "wordpiece":
        vocab = tok.vocabulary()
        spec.update(unknown_token="[UNK]", unknown_id=vocab.index("[UNK]"),
                    suffix_indicator="##", split_on_cjk=True,
                    max_bytes_per_word=MAX_BYTES_PER_WORD,
                    special_tokens=o.get("special_tokens")
                    or [t for t in vocab if t.startswith("[") and t.endswith("]")],
                    vocabulary=vocab)
    elif tok.kind == "sentencepiece":
        spec.update(unknown_id=1, proto_hex=tok.proto.hex())
    elif tok.kind == "byte_pair":
        spec.update(special_tokens=o.get("special_tokens"),
                    pre_split_patterns=byte_pair.split_patterns(),
                    byte_to_unicode=byte_pair.byte_symbols(), vocabulary=tok.vocabulary(),
                    merges=tok.merges)
    if "preset" in o:
        spec["preset"] = o["preset"]
    return spec


def tokenizer_from_spec(spec: dict[str, Any]) -> TextTokenizer:
    """The KerasHub tokenizer a spec describes (reload in another process)."""
    import keras_hub

    kind, length = spec["kind"], int(spec["sequence_length"])
    ends = {"start_token": spec.get("start_token"), "end_token": spec.get("end_token")}
    if kind == "bytes":
        tok = keras_hub.tokenizers.ByteTokenizer(lowercase=spec["lowercase"], dtype="int32")
        return TextTokenizer(tok, kind, length, options={"lowercase": spec["lowercase"]})
    if kind == "sentencepiece":
        proto = bytes.fromhex(spec["proto_hex"])
        tok = keras_hub.tokenizers.SentencePieceTokenizer(proto=proto, dtype="int32")
        return TextTokenizer(tok, kind, length, options={"lowercase": spec["lowercase"]},
                             proto=proto, **ends)
    if kind == "byte_pair":
        return _byte_pair(spec["vocabulary"], spec["merges"], length, options={
            "lowercase": spec["lowercase"], "special_tokens": spec.get("special_tokens")},
            **ends)
    options = {"lowercase": spec["lowercase"], "strip_accents": spec["strip_accents"]}
    tok = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(spec["vocabulary"]), oov_token=spec["unknown_token"], dtype="int32",
        **options)
    return TextTokenizer(tok, kind, length, options={
        **options, "special_tokens": spec.get("special_tokens")}, **ends)
