"""Byte-level BPE (GPT-2 style) merges learned on the training split.

KerasHub tokenizes byte-pair text (`keras_hub.tokenizers.BytePairTokenizer`) but has
no trainer, so `learn_byte_pair` learns the merges here, small and deterministic:

1. Words: each training text (case-folded first when `lowercase`) is pre-split by
   KerasHub's own `split_strings_for_bpe` (the GPT-2 regex the tokenizer uses), and
   the words are counted.
2. Symbols: a word is its UTF-8 bytes, each written as GPT-2's byte symbol
   (`bytes_to_unicode`: printable bytes stand for themselves, the other 68 map to
   U+0100 on), so no byte is ever unknown.
3. Merges: the adjacent symbol pair seen most often (weighted by word count) is
   merged everywhere, again and again; ties go to the smallest pair in code-point
   order, so the same texts always give the same merges. Pairs seen fewer than
   `MIN_PAIR_COUNT` times are not merged; a pair whose merged string is a special
   token is skipped (its id would be ambiguous).

The vocabulary is the special tokens (the first is padding, id 0), the 256 byte
symbols in byte order, then each new merged token in merge order, up to
`vocab_size` tokens.

`load_byte_pair` reads a local GPT-2 / RoBERTa directory (`vocab.json` +
`merges.txt`, or a KerasHub preset's `assets/tokenizer/vocabulary.json` +
`merges.txt`) instead: its merges as they are, its tokens re-numbered after the
special tokens (id 0 must be padding here; GPT-2's id 0 is "!").
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from pathlib import Path

from kdl.data.core import DataError

MIN_PAIR_COUNT = 2
BATCH = 1000


def byte_symbols() -> list[str]:
    """GPT-2's byte -> symbol map as KerasHub builds it (index = byte value)."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    bs, cs = bytes_to_unicode()
    by_byte = dict(zip([b[0] for b in bs], cs, strict=True))
    return [by_byte[b] for b in range(256)]


def split_patterns() -> dict[str, str]:
    """The RE2 patterns of KerasHub's pre-split, in the order they run (the contract
    carries them; `split_strings_for_bpe` writes the first two inline)."""
    from keras_hub.src.tokenizers import byte_pair_tokenizer as bpe

    spaces = bpe.SPECIAL_WHITESPACES
    return {"mark_before_word": rf"( )([^\s{spaces}])", "mark_at_end": rf"(\s{spaces})$",
            "split": bpe.SPLIT_PATTERN_1, "split_last_space": bpe.SPLIT_PATTERN_2}


def case_fold(texts):
    """The `lowercase` step: TF Text's NFKC_Casefold (as KerasHub's ByteTokenizer)."""
    import tensorflow_text as tf_text

    return tf_text.case_fold_utf8(texts)


def count_words(texts, lowercase: bool) -> Counter:
    """KerasHub's pre-split words of `texts` (UTF-8 bytes) -> how often each occurs."""
    import tensorflow as tf
    from keras_hub.src.tokenizers.byte_pair_tokenizer import split_strings_for_bpe

    counts: Counter = Counter()
    for i in range(0, len(texts), BATCH):
        batch = tf.constant(texts[i:i + BATCH])
        if lowercase:
            batch = case_fold(batch)
        counts.update(split_strings_for_bpe(batch).flat_values.numpy().tolist())
    return counts


def learn_merges(word_counts: Counter, symbols: list[str], max_tokens: int,
                 reserved: set[str]) -> list[tuple[str, str]]:
    """Merges, most frequent pair first, until `max_tokens` new tokens are made."""
    words = [[symbols[b] for b in w] for w in word_counts]
    counts = list(word_counts.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:], strict=False):
            pairs[p] += counts[i]
            where[p].add(i)
    heap = [(-n, p) for p, n in pairs.items()]
    heapq.heapify(heap)
    merges, made = [], set(symbols) | reserved
    while heap and len(made) - len(symbols) - len(reserved) < max_tokens:
        n, p = heapq.heappop(heap)
        if -n != pairs.get(p):
            continue  # stale entry: the pair's count changed, a fresh entry is queued
        if -n < MIN_PAIR_COUNT:
            break  # the most frequent pair left is too rare
        new = p[0] + p[1]
        if new in reserved:
            continue
        merges.append(p)
        made.add(new)
        changed = set()
        for i in sorted(where.pop(p)):
            w, c = words[i], counts[i]
            for q in zip(w, w[1:], strict=False):
                pairs[q] -= c
                changed.add(q)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == p[0] and w[j + 1] == p[1]:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for q in zip(out, out[1:], strict=False):
                pairs[q] += c
                where[q].add(i)
                changed.add(q)
        for q in sorted(changed):
            if pairs[q] > 0:
                heapq.heappush(heap, (-pairs[q], q))
            else:
                pairs.pop(q)
    return merges


def learn_byte_pair(texts, vocab_size: int, special_tokens: list[str],
                    lowercase: bool) -> tuple[list[str], list[str]]:
    """`(vocabulary by id, merges "left right" in rank order)` learned on `texts`."""
    symbols = byte_symbols()
    if len(set(special_tokens)) != len(special_tokens) or set(special_tokens) & set(symbols):
        raise DataError(f"tokenizer.special_tokens {special_tokens} must be distinct and none "
                        "a single byte symbol (e.g. 'a'); byte_pair reserves those")
    room = vocab_size - len(special_tokens) - 256
    if room < 1:
        raise DataError(f"tokenizer.kind=byte_pair needs vocab_size > {len(special_tokens) + 256}"
                        f" ({len(special_tokens)} special tokens + 256 byte symbols); got "
                        f"{vocab_size}")
    merges = learn_merges(count_words(list(texts), lowercase), symbols, room,
                          set(special_tokens))
    vocab = list(special_tokens) + symbols
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab.append(a + b)
    return vocab, [f"{a} {b}" for a, b in merges]


PRESET_FILES = (("vocab.json", "merges.txt"),
                ("assets/tokenizer/vocabulary.json", "assets/tokenizer/merges.txt"))


def load_byte_pair(preset: str, special_tokens: list[str]) -> tuple[list[str], list[str]]:
    """`(vocabulary by id, merges)` of a local byte-level BPE directory, its tokens
    re-numbered after `special_tokens`; every byte symbol and every merge's parts and
    result must be in its vocabulary (else no id for them)."""
    p = Path(preset).expanduser()
    found = next(((p / v, p / m) for v, m in PRESET_FILES
                  if (p / v).is_file() and (p / m).is_file()), None)
    if found is None:
        raise DataError(f"tokenizer.preset {preset!r} holds no byte-pair vocabulary: expected "
                        "vocab.json + merges.txt (GPT-2 / RoBERTa layout) or a KerasHub preset's "
                        "assets/tokenizer/vocabulary.json + merges.txt")
    try:
        ids = json.loads(found[0].read_text(encoding="utf-8"))
        lines = found[1].read_text(encoding="utf-8").splitlines()
    except (ValueError, OSError) as e:
        raise DataError(f"tokenizer.preset {preset!r}: cannot read its vocabulary ({e})") from None
    if not isinstance(ids, dict):
        raise DataError(f"{found[0]}: must map each token to an id")
    merges = [m for m in lines if m.strip() and not m.lstrip().startswith("#version")]
    missing = [s for s in byte_symbols() if s not in ids]
    if missing:
        raise DataError(f"{found[0]}: lacks {len(missing)} of the 256 byte symbols (e.g. "
                        f"{missing[0]!r}); it is not a byte-level BPE vocabulary")
    for n, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2 or not all(t in ids for t in (*parts, "".join(parts))):
            raise DataError(f"{found[1]}: merge {n + 1} {m!r} is not two tokens of the "
                            "vocabulary whose concatenation is in it too")
    reserved = set(special_tokens)
    vocab = list(special_tokens) + [t for t in sorted(ids, key=ids.get) if t not in reserved]
    return vocab, merges
