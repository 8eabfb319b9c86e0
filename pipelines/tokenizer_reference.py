"""The bundle's tokenizer in plain Python (standard library only): the code an app ports.

`ReferenceTokenizer(spec, vocabulary)` turns a string into the token ids the
model takes, following the `tokenizer` block of `contract.json` step by step
(its `normalization` list, in order). `verify-bundle` replays the golden
strings through it, and a test checks that it agrees with KerasHub's
tokenizer (which ran in training's tf.data pipeline) on the golden strings and
on a fuzz corpus. Kinds: `wordpiece`, `bytes`, `sentencepiece` (unigram models,
read from the bundled `.model` file: its precompiled normalization map, whitespace
rules and piece scores; `SentencePieceModel`) and `byte_pair` (GPT-2-style byte-level
BPE from `vocab.json` + `merges.txt`: KerasHub's regex pre-split, the byte -> symbol
map, merges by rank; `BytePairModel`).

Porting notes: Python's `unicodedata` supplies NFD/NFKC and the general
categories (Mn, Cc, Cf, P*); `str.casefold` is Unicode full case folding.
Apps need the same Unicode tables (ICU, Java's `Normalizer`, Swift's
`decomposedStringWithCanonicalMapping`).
"""

from __future__ import annotations

import json
import re
import struct
import unicodedata
from pathlib import Path

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
SUPPORTED = ("wordpiece", "bytes", "sentencepiece", "byte_pair")


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
    """The vocabulary file: UTF-8, one token per line (only "\\n" ends a line), id = line;
    or a `.json` file mapping token -> id (byte_pair's vocab.json), as a list by id."""
    with open(path, encoding="utf-8", newline="") as fh:
        content = fh.read()
    if str(path).endswith(".json"):
        ids = json.loads(content)
        if not isinstance(ids, dict) or sorted(ids.values()) != list(range(len(ids))):
            raise ValueError(f"{path}: must map each token to an id, ids 0..n-1 once each")
        return sorted(ids, key=ids.get)
    return content.split("\n")[:-1] if content.endswith("\n") else content.split("\n")


class ReferenceTokenizer:
    """`encode(text) -> list[int]` of length `sequence_length`, as the contract says.

    Args:
        spec: the contract's `tokenizer` block.
        vocabulary: the vocabulary file's lines (id = line number); empty for bytes.
        model: the SentencePiece `.model` file's bytes (sentencepiece only).
        merges: merges.txt's "left right" lines, rank order (byte_pair only).
    """

    def __init__(self, spec: dict, vocabulary: list[str] = (), model: bytes = b"",
                 merges: list[str] = ()):
        self.spec = spec
        self.kind = spec["kind"]
        if self.kind not in SUPPORTED:
            raise NotImplementedError(f"the reference tokenizer implements {SUPPORTED}, not "
                                      f"{self.kind!r}")
        self.vocab = {t: i for i, t in enumerate(vocabulary)}
        self.length = int(spec["sequence_length"])
        self.steps = [s["step"] for s in spec["normalization"]]
        self.sentencepiece = SentencePieceModel(model) if self.kind == "sentencepiece" else None
        self.byte_pair = None
        if self.kind == "byte_pair":
            if spec.get("pre_split_patterns", KERAS_HUB_SPLIT) != KERAS_HUB_SPLIT:
                raise NotImplementedError("the reference implements KerasHub's GPT-2 pre-split "
                                          "patterns; the contract names others")
            self.byte_pair = BytePairModel(vocabulary, merges, split="pre_split" in self.steps)

    @classmethod
    def from_bundle(cls, bundle_dir, spec: dict) -> ReferenceTokenizer:
        """The tokenizer of a bundle: `spec` is its contract's `tokenizer` block, whose
        files (vocabulary, SentencePiece model, merges) are read from `bundle_dir`."""
        bundle_dir = Path(bundle_dir)
        vocab = (read_vocabulary(bundle_dir / spec["vocabulary_file"])
                 if spec.get("vocabulary_file") else [])
        model = (bundle_dir / spec["sentencepiece_model_file"]).read_bytes() if spec.get(
            "sentencepiece_model_file") else b""
        merges = read_merges(bundle_dir / spec["merges_file"]) if spec.get(
            "merges_file") else []
        return cls(spec, vocab, model, merges)

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
        if self.kind in ("bytes", "byte_pair"):
            if "lowercase" in self.steps:
                text = nfkc_casefold(text)
            if self.byte_pair is not None:
                return self.byte_pair.encode(text)
            return list(text.encode("utf-8"))
        return [i for w in self.words(text) for i in self.wordpiece(w)]

    def encode(self, text: str) -> list[int]:
        start, end = self.spec.get("start_id"), self.spec.get("end_id")
        room = self.length - (start is not None) - (end is not None)
        ids = self.tokens(text)[:room]
        ids = ([start] if start is not None else []) + ids + ([end] if end is not None else [])
        return ids + [int(self.spec["pad_id"])] * (self.length - len(ids))


# --- Byte-level BPE (GPT-2 style), from vocab.json + merges.txt --------------------------
# KerasHub's BytePairTokenizer (keras_hub 0.32, its tf.data path) pre-splits with RE2
# regexes whose \p{L} / \p{N} classes and \s are rebuilt here for Python's `re`:
# RE2's \s is ASCII [\t\n\f\r ] only (no \v, no Unicode spaces), and RE2's `$` is the end
# of the text (Python's `\Z`). The marker U+096C (DEVANAGARI DIGIT SIX) stands in for
# GPT-2's lookahead; tokens that are just the marker are dropped afterwards (so a lone
# U+096C in the text vanishes too, as in KerasHub).

MARKER = "\u096c"
SPECIAL_SPACES = "\u00a0\u2009\u202f\u3000"
RE2_SPACE = "\t\n\f\r "
# The patterns as KerasHub writes them (RE2 syntax); the contract carries them, and the
# reference checks that they are the ones it implements.
KERAS_HUB_SPLIT = {
    "mark_before_word": r"( )([^\s\x{a0}\x{2009}\x{202f}\x{3000}])",
    "mark_at_end": r"(\s\x{a0}\x{2009}\x{202f}\x{3000})$",
    "split": (r"'s|'t|'re|'ve|'m|'ll|'d|[\s\x{a0}\x{2009}\x{202f}\x{3000}]+"
              r"[\n\r\t\f६\x{a0}\x{2009}\x{202f}\x{3000}]| ?\p{L}+| ?[\p{N}]+|"
              r" ?[^\s\p{L}\p{N}\x{a0}\x{2009}\x{202f}\x{3000}]+"),
    "split_last_space": r"[ \t\r\f\v६\x{a0}\x{2009}\x{202f}\x{3000}]$",
}
_PATTERNS: dict = {}


def _class(prefix: str) -> str:
    """A `re` character class body of every code point whose general category starts
    with `prefix` ("L": letters Lu Ll Lt Lm Lo, "N": numbers Nd Nl No)."""
    ranges, start, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if unicodedata.category(chr(cp)).startswith(prefix):
            if start is None:
                start = cp
            elif cp != prev + 1:
                ranges.append((start, prev))
                start = cp
            prev = cp
    ranges.append((start, prev))
    return "".join(f"\\U{lo:08x}" + (f"-\\U{hi:08x}" if hi > lo else "") for lo, hi in ranges)


def _patterns() -> dict:
    """KERAS_HUB_SPLIT translated to Python `re` (compiled once)."""
    if not _PATTERNS:
        letters, numbers = _class("L"), _class("N")
        sp, ws = re.escape(SPECIAL_SPACES), re.escape(RE2_SPACE)
        _PATTERNS.update(
            mark_before_word=re.compile(f"( )([^{ws}{sp}])"),
            mark_at_end=re.compile(f"([{ws}]{sp})\\Z"),
            split=re.compile(f"'s|'t|'re|'ve|'m|'ll|'d|[{ws}{sp}]+[\\n\\r\\t\\f{MARKER}{sp}]"
                             f"| ?[{letters}]+| ?[{numbers}]+| ?[^{ws}{letters}{numbers}{sp}]+"),
            split_last_space=re.compile(f"[ \\t\\r\\f\\v{MARKER}{sp}]\\Z"))
    return _PATTERNS


def regex_split(text: str, pattern) -> list[str]:
    """TF Text's `regex_split` with the delimiters kept: the text between matches and
    each match, in order, empty pieces left out."""
    pieces, last = [], 0
    for m in pattern.finditer(text):
        if m.start() > last:
            pieces.append(text[last:m.start()])
        pieces.append(m.group())
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    return [p for p in pieces if p]


def pre_split(text: str) -> list[str]:
    """KerasHub's `split_strings_for_bpe`: the words BPE runs on, in order."""
    p = _patterns()
    text = p["mark_before_word"].sub(MARKER + r"\1\2", text)
    text = p["mark_at_end"].sub(r"\1" + MARKER, text)
    words = [w for piece in regex_split(text, p["split"])
             for w in regex_split(piece, p["split_last_space"])]
    return [w for w in words if w != MARKER]


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> symbol map (index = byte): printable bytes 33-126, 161-172 and
    174-255 are their own code point; the other 68, in increasing order, U+0100 on."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    symbols, extra = [""] * 256, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def read_merges(path) -> list[str]:
    """merges.txt: one "left right" merge per line, rank = order; "#version" lines skipped."""
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\r\n") for line in fh if not line.lstrip().startswith("#version")]


class BytePairModel:
    """`encode(text) -> ids` of a byte-level BPE vocabulary + merges, as KerasHub does.

    Args:
        vocabulary: tokens by id (vocab.json's token -> id, as a list).
        merges: "left right" pairs, lowest rank first.
        split: pre-split the text into words first (the contract's "pre_split" step).
    """

    def __init__(self, vocabulary, merges, split: bool = True):
        self.ids = {t: i for i, t in enumerate(vocabulary)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.symbols = bytes_to_unicode()
        self.split = split
        self.cache: dict[str, list[int]] = {}

    def word(self, word: str) -> list[int]:
        """One word: its bytes as symbols, then the leftmost lowest-rank adjacent pair
        merged, again and again, until no adjacent pair is a merge."""
        if word not in self.cache:
            parts = [self.symbols[b] for b in word.encode("utf-8")]
            while len(parts) > 1:
                ranks = [self.ranks.get(pair) for pair in zip(parts, parts[1:], strict=False)]
                found = [(r, i) for i, r in enumerate(ranks) if r is not None]
                if not found:
                    break
                _, i = min(found)
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            self.cache[word] = [self.ids.get(p, -1) for p in parts]
        return self.cache[word]

    def encode(self, text: str) -> list[int]:
        words = pre_split(text) if self.split else ([text] if text else [])
        return [i for w in words for i in self.word(w)]


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
