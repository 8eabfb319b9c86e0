"""The bundle's tokenizer in plain Python (standard library only): the code an app ports.

`ReferenceTokenizer(spec, vocabulary)` turns a string into the token ids the
model takes, following the `tokenizer` block of `contract.json` step by step
(its `normalization` list, in order). `verify-bundle` replays the golden
strings through it, and a test checks that it agrees with KerasHub's
tokenizer (which ran in training's tf.data pipeline) on the golden strings and
on a fuzz corpus. Kinds: `wordpiece` and `bytes`. SentencePiece is not
reimplemented here (an app uses the SentencePiece runtime with the bundled
model file); `verify-bundle` then checks ids -> outputs only and says so.

Porting notes: Python's `unicodedata` supplies NFD/NFKC and the general
categories (Mn, Cc, Cf, P*); `str.casefold` is Unicode full case folding.
Apps need the same Unicode tables (ICU, Java's `Normalizer`, Swift's
`decomposedStringWithCanonicalMapping`).
"""

from __future__ import annotations

import unicodedata

# CJK ideograph blocks split off as words of their own (BERT's list).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Unicode default-ignorable code points, which NFKC_Casefold removes.
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
                     (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
                     (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
                     (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                     (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
ASCII_WHITESPACE = " \t\n\r\f"
SUPPORTED = ("wordpiece", "bytes")


def _in(ranges, c: str) -> bool:
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in ranges)


def is_cjk(c: str) -> bool:
    return _in(CJK_RANGES, c)


def is_split_space(c: str) -> bool:
    """Dropped separators: ASCII whitespace, control (Cc) and format (Cf) characters."""
    return c in ASCII_WHITESPACE or unicodedata.category(c) in ("Cc", "Cf")


def is_punctuation(c: str) -> bool:
    """Kept separators: every ASCII non-alphanumeric printable, and Unicode P*."""
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def strip_accents(text: str) -> str:
    text = unicodedata.normalize("NFD", text)
    return "".join(c for c in text if unicodedata.category(c) != "Mn")


def nfkc_casefold(text: str) -> str:
    """Unicode NFKC_Casefold: NFKC, full case folding, NFKC, drop default ignorables."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return "".join(c for c in text if not _in(DEFAULT_IGNORABLE, c))


def split_words(text: str) -> list[str]:
    """Split at separators; punctuation and CJK ideographs become words of their own."""
    words, current = [], []
    for c in text:
        if is_split_space(c):
            kept = None
        elif is_punctuation(c) or is_cjk(c):
            kept = c
        else:
            current.append(c)
            continue
        if current:
            words.append("".join(current))
            current = []
        if kept:
            words.append(kept)
    if current:
        words.append("".join(current))
    return words


def read_vocabulary(path) -> list[str]:
    """The vocabulary file: UTF-8, one token per line (only "\\n" ends a line), id = line."""
    with open(path, encoding="utf-8", newline="") as fh:
        content = fh.read()
    return content.split("\n")[:-1] if content.endswith("\n") else content.split("\n")


class ReferenceTokenizer:
    """`encode(text) -> list[int]` of length `sequence_length`, as the contract says.

    Args:
        spec: the contract's `tokenizer` block.
        vocabulary: the vocabulary file's lines (id = line number); empty for bytes.
    """

    def __init__(self, spec: dict, vocabulary: list[str] = ()):
        self.spec = spec
        self.kind = spec["kind"]
        if self.kind not in SUPPORTED:
            raise NotImplementedError(f"the reference tokenizer implements {SUPPORTED}, not "
                                      f"{self.kind!r}")
        self.vocab = {t: i for i, t in enumerate(vocabulary)}
        self.length = int(spec["sequence_length"])
        self.steps = [s["step"] for s in spec["normalization"]]

    def words(self, text: str) -> list[str]:
        """The WordPiece pre-tokenization of `text` (normalized words)."""
        if "strip_accents" in self.steps:
            text = strip_accents(text)
        words = split_words(text)
        if "lowercase" in self.steps:
            words = [nfkc_casefold(w) for w in words]
        return [w for w in words if w]

    def wordpiece(self, word: str) -> list[int]:
        unk = [int(self.spec["unknown_id"])]
        if len(word.encode("utf-8")) > int(self.spec["max_bytes_per_word"]):
            return unk
        prefix, ids, start = self.spec["suffix_indicator"], [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = (prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return unk
            start = end
        return ids

    def tokens(self, text: str) -> list[int]:
        """Ids before packing (no start/end, no truncation, no padding)."""
        if self.kind == "bytes":
            if "lowercase" in self.steps:
                text = nfkc_casefold(text)
            return list(text.encode("utf-8"))
        return [i for w in self.words(text) for i in self.wordpiece(w)]

    def encode(self, text: str) -> list[int]:
        start, end = self.spec.get("start_id"), self.spec.get("end_id")
        room = self.length - (start is not None) - (end is not None)
        ids = self.tokens(text)[:room]
        ids = ([start] if start is not None else []) + ids + ([end] if end is not None else [])
        return ids + [int(self.spec["pad_id"])] * (self.length - len(ids))
