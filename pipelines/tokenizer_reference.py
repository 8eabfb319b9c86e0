"""The bundle's tokenizer in plain Python (standard library only): the code an app ports.

`ReferenceTokenizer(spec, vocabulary)` turns a string into the token ids the
model takes, following the `tokenizer` block of `contract.json` step by step
(its `normalization` list, in order). `verify-bundle` replays the golden
strings through it, and a test checks that it agrees with KerasHub's
tokenizer (which ran in training's tf.data pipeline) on the golden strings and
on a fuzz corpus. Kinds: `wordpiece`, `bytes` and `sentencepiece` (unigram models,
read from the bundled `.model` file: its precompiled normalization map, whitespace
rules and piece scores; `SentencePieceModel`).

Porting notes: Python's `unicodedata` supplies NFD/NFKC and the general
categories (Mn, Cc, Cf, P*); `str.casefold` is Unicode full case folding.
Apps need the same Unicode tables (ICU, Java's `Normalizer`, Swift's
`decomposedStringWithCanonicalMapping`).
"""

from __future__ import annotations

import struct
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
SUPPORTED = ("wordpiece", "bytes", "sentencepiece")


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
        model: the SentencePiece `.model` file's bytes (sentencepiece only).
    """

    def __init__(self, spec: dict, vocabulary: list[str] = (), model: bytes = b""):
        self.spec = spec
        self.kind = spec["kind"]
        if self.kind not in SUPPORTED:
            raise NotImplementedError(f"the reference tokenizer implements {SUPPORTED}, not "
                                      f"{self.kind!r}")
        self.vocab = {t: i for i, t in enumerate(vocabulary)}
        self.length = int(spec["sequence_length"])
        self.steps = [s["step"] for s in spec["normalization"]]
        self.sentencepiece = SentencePieceModel(model) if self.kind == "sentencepiece" else None

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
        if self.sentencepiece is not None:
            return self.sentencepiece.encode(text)
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


# --- SentencePiece (unigram), from the `.model` file alone -------------------------------
# The model file is a protobuf (ModelProto); the few fields used are read from its wire
# format here, so no protobuf package is needed. Normalization follows the file's own
# precompiled character map (KerasHub trains with `nmt_nfkc`, or `nmt_nfkc_cf` when
# lowercasing), a Darts double-array trie of byte strings -> replacement strings.

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # how SentencePiece writes a space inside pieces
UNK_PENALTY = 10.0  # an unknown character scores the smallest piece score minus this


def _f32(x: float) -> float:
    """Round to float32: SentencePiece adds its path scores in 32-bit floats."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _fields(buf: bytes):
    """`(field number, value)` of a protobuf message: ints, or bytes for strings/messages."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"SentencePiece model: unsupported protobuf wire type {wire}")
        yield field, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


class SentencePieceModel:
    """`encode(text) -> ids` of a unigram SentencePiece `.model` file, as its runtime does.

    Args:
        model: the `.model` file's bytes (KerasHub's `proto`).
    """

    def __init__(self, model: bytes):
        self.pieces: list[tuple[str, float, int]] = []
        spec = {3: 1, 4: 1, 5: 1, 2: b""}  # add_dummy_prefix, remove_extra/escape spaces
        for field, value in _fields(model):
            if field == 1:
                piece, score, kind = "", 0.0, NORMAL
                for f, v in _fields(value):
                    if f == 1:
                        piece = v.decode("utf-8")
                    elif f == 2:
                        score = struct.unpack("<f", v)[0]
                    elif f == 3:
                        kind = v
                self.pieces.append((piece, score, kind))
            elif field == 2:
                for f, v in _fields(value):
                    if f == 3 and v != 1:  # trainer_spec.model_type: 1 = unigram
                        raise ValueError("the reference implements unigram SentencePiece models")
            elif field == 3:
                spec.update(_fields(value))
        self.add_dummy_prefix, self.remove_spaces, self.escape = spec[3], spec[4], spec[5]
        self.ids = {p.encode("utf-8"): i for i, (p, _, k) in enumerate(self.pieces)
                    if k in (NORMAL, USER_DEFINED, UNUSED)}
        self.kinds = [k for _, _, k in self.pieces]
        self.max_len = max((len(p) for p in self.ids), default=1)
        self.unk_id = next(i for i, (_, _, k) in enumerate(self.pieces) if k == UNKNOWN)
        normal = [s for _, s, k in self.pieces if k == NORMAL]
        self.min_score, self.max_score = min(normal), max(normal)
        charsmap = spec[2]
        if charsmap:
            n = struct.unpack("<I", charsmap[:4])[0]
            self.units = struct.unpack(f"<{n // 4}I", charsmap[4:4 + n])
            self.replacements = charsmap[4 + n:]
        else:
            self.units, self.replacements = (), b""

    def _prefix(self, data: bytes, start: int) -> tuple[bytes, int]:
        """The longest charsmap match at `start` -> (replacement, bytes consumed);
        otherwise one UTF-8 character as it is (an invalid byte becomes U+FFFD)."""
        best = None
        if self.units:
            units, pos = self.units, 0
            pos ^= (units[0] >> 10) << ((units[0] & (1 << 9)) >> 6)
            for i in range(start, len(data)):
                pos ^= data[i]
                unit = units[pos]
                if unit & ((1 << 31) | 0xFF) != data[i]:
                    break
                pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
                if (unit >> 8) & 1:
                    best = (units[pos] & ((1 << 31) - 1), i + 1 - start)
        if best is not None:
            offset, length = best
            end = self.replacements.index(b"\0", offset)
            return self.replacements[offset:end], length
        n = _char_len(data, start)
        try:
            return data[start:start + n].decode("utf-8").encode("utf-8"), n
        except UnicodeDecodeError:
            return "\ufffd".encode(), 1

    def normalize(self, text: str) -> bytes:
        """The normalized UTF-8 string the pieces are matched against."""
        data, i, out = text.encode("utf-8"), 0, bytearray()
        if self.remove_spaces:  # leading spaces
            while i < len(data):
                rep, n = self._prefix(data, i)
                if rep != b" ":
                    break
                i += n
        if i >= len(data):
            return b""
        space = SPACE.encode() if self.escape else b" "
        if self.add_dummy_prefix:
            out += space
        prev_space = bool(self.remove_spaces)
        while i < len(data):
            rep, n = self._prefix(data, i)
            i += n
            if prev_space:
                rep = rep.lstrip(b" ")
            if rep:
                out += rep.replace(b" ", space) if self.escape else rep
                prev_space = rep.endswith(b" ")
            if not self.remove_spaces:
                prev_space = False
        if self.remove_spaces:
            while out.endswith(space):
                del out[-len(space):]
        return bytes(out)

    def encode(self, text: str) -> list[int]:
        """Viterbi over the pieces (best total score; unknown characters score
        `min_score - 10`), then runs of unknown pieces merged into one."""
        s = self.normalize(text)
        n = len(s)
        best: list[tuple[float, int, int] | None] = [None] * (n + 1)  # (score, start, id)
        best[0] = (0.0, -1, -1)
        unk_score = self.min_score - UNK_PENALTY
        start = 0
        while start < n:
            here = best[start][0]
            char = min(_char_len(s, start), n - start)
            single = False
            for end in range(start + 1, min(n, start + self.max_len) + 1):
                pid = self.ids.get(s[start:end])
                if pid is None or self.kinds[pid] == UNUSED:
                    continue
                length = end - start
                score = (length * self.max_score - 0.1 if self.kinds[pid] == USER_DEFINED
                         else self.pieces[pid][1])
                cand = _f32(here + score)
                if best[end] is None or cand > best[end][0]:
                    best[end] = (cand, start, pid)
                single = single or length == char
            if not single:
                cand = _f32(here + unk_score)
                if best[start + char] is None or cand > best[start + char][0]:
                    best[start + char] = (cand, start, self.unk_id)
            start += char
        ids, end = [], n
        while end > 0:
            _, start, pid = best[end]
            ids.append(pid)
            end = start
        ids.reverse()
        return [p for k, p in enumerate(ids) if not (p == self.unk_id and k and
                                                     ids[k - 1] == self.unk_id)]


def _char_len(data: bytes, i: int) -> int:
    """Bytes of the UTF-8 character starting at `i` (1 for a stray byte)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[data[i] >> 4]  # SentencePiece's table
