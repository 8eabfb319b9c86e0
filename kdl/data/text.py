"""Text datasets: the user's CSV/TSV/JSONL or folder of texts, keras.datasets' IMDB and
Reuters, and the generated `reviews` set.

Each returns `RawData` whose `x` is a 1-D object array of Python strings; the
tokenizer (`kdl.data.tokenizers`) is learned on the training split and turns
them into int32 token ids in the tf.data pipeline (`load_splits(tokenizer=...)`).

Bad rows are never silently kept: empty texts and rows without a label are
dropped, undecodable bytes are replaced (U+FFFD), and each is counted in
`info["data_report"]`; a label with a single example cannot be both trained on
and evaluated, so it is a `DataError` naming the label.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from kdl.data.core import DataError, RawData
from kdl.registry import DATASETS

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}


def _decode(raw: bytes, report: dict[str, int]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report["non_utf8_replaced"] += 1
        return raw.decode("utf-8", errors="replace")


def _repair(value, report: dict[str, int]):
    """A field decoded with surrogateescape: undecodable bytes -> U+FFFD, row counted."""
    if isinstance(value, str) and any("\udc80" <= c <= "\udcff" for c in value):
        report["non_utf8_replaced"] += 1
        return "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in value)
    return value


def _new_report() -> dict[str, int]:
    return {"rows": 0, "empty_text_dropped": 0, "missing_label_dropped": 0,
            "non_utf8_replaced": 0}


def text_classes(texts: list[str], labels: list[str], report: dict[str, int], source: str,
                 label_names: list[str] | None = None, splits=None) -> RawData:
    """Drop empty texts and missing labels (counted), map labels to ids, check counts."""
    keep = []
    for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
        if lab is None or str(lab).strip() == "":
            report["missing_label_dropped"] += 1
        elif t is None or not str(t).strip():
            report["empty_text_dropped"] += 1
        else:
            keep.append(i)
    if not keep:
        raise DataError(f"{source}: no usable rows ({report}); every row needs a non-empty "
                        "text and a label")
    texts = [str(texts[i]) for i in keep]
    labels = [str(labels[i]).strip() for i in keep]
    names = list(label_names or sorted(set(labels), key=lambda v: (len(v), v)))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise DataError(f"{source}: labels {unknown[:5]} are not in data.params.label_names")
    counts = {n: labels.count(n) for n in names}
    single = [n for n, c in counts.items() if c == 1]
    if single and splits is None:
        raise DataError(f"{source}: label {single[0]!r} has a single example (it cannot be both "
                        "trained on and tested): add examples of it or remove that row")
    report["examples"] = len(texts)
    y = np.array([index[v] for v in labels], "int32")
    if splits is not None:
        kept = {old: new for new, old in enumerate(keep)}
        splits = {k: np.array([kept[i] for i in v if i in kept], "int64")
                  for k, v in splits.items()}
    return RawData(np.array(texts, dtype=object), y, "classification", names,
                   splits=splits or {}, info={"data_report": dict(report)})


def _require(path: str | None, what: str) -> Path:
    if not path:
        raise DataError(f"the {what} dataset needs data.path=<{what} file or folder>")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data.path {str(p)!r} does not exist")
    return p


@DATASETS.register("text_csv", task="classification", input="text", check=True)
def text_csv(path: str | None = None, text: str | None = None, target: str | None = None,
             task: str = "classification", label_names: list[str] | None = None) -> RawData:
    """A CSV/TSV (header row) or JSON-lines file of texts and labels.

    `text` and `target` name the columns (keys in JSONL). UTF-8; quoted fields
    may hold newlines. Rows with an empty text or no label are dropped and
    counted; undecodable bytes are replaced (U+FFFD) and the fields counted (`info["data_report"]`).
    """
    p = _require(path, "text_csv")
    if task != "classification":
        raise DataError("text_csv: only data.task=classification is supported for texts")
    if not text or not target:
        raise DataError("text_csv needs data.text=<text column> and data.target=<label column>")
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{p.name}: text_csv reads .csv, .tsv or .jsonl files")
    report = _new_report()
    content = p.read_bytes().decode("utf-8", errors="surrogateescape")
    if content.startswith("\ufeff"):
        content = content[1:]
    if TEXT_SUFFIXES[suffix] is None:
        rows = []
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p.name} line {n} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p.name} line {n}: expected a JSON object per line")
            rows.append(row)
        columns = sorted({k for r in rows for k in r})
    else:
        reader = csv.DictReader(io.StringIO(content, newline=""),
                                delimiter=TEXT_SUFFIXES[suffix])
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    for key, col in (("text", text), ("target", target)):
        if col not in columns:
            raise DataError(f"data.{key}: column {col!r} is not in {p.name}; columns: "
                            f"{', '.join(columns)}")
    report["rows"] = len(rows)
    return text_classes([_repair(r.get(text), report) for r in rows],
                        [_repair(r.get(target), report) for r in rows], report, p.name,
                        label_names)


@DATASETS.register("text_folder", task="classification", input="text", check=True)
def text_folder(path: str | None = None, label_names: list[str] | None = None) -> RawData:
    """`keras.utils.text_dataset_from_directory`'s layout: `path/<label>/*.txt`.

    One text per file; the subfolder names are the labels (sorted, as Keras
    does). Empty files are dropped and counted; undecodable bytes replaced.
    """
    p = _require(path, "text_folder")
    if not p.is_dir():
        raise DataError(f"data.path {str(p)!r} is not a folder of <label>/*.txt")
    folders = sorted(d.name for d in p.iterdir() if d.is_dir())
    if len(folders) < 2:
        raise DataError(f"{p}: needs one subfolder per label (at least 2), found {folders}")
    report = _new_report()
    texts, labels = [], []
    for name in folders:
        for f in sorted((p / name).glob("*.txt")):
            texts.append(_decode(f.read_bytes(), report))
            labels.append(name)
    report["rows"] = len(texts)
    return text_classes(texts, labels, report, str(p), label_names or folders)


def _keras_cache(fname: str) -> Path:
    """Where `keras.utils.get_file` keeps `fname` (`$KERAS_HOME/datasets`)."""
    import os

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets" / fname


def _keras_text(loader: str, fname: str, index_fname: str, label_names, download: bool,
                **kwargs) -> RawData:
    """A `keras.datasets` word-index set decoded back to text (the tokenizer is ours)."""
    import keras

    module = getattr(keras.datasets, loader)
    missing = [f for f in (fname, index_fname) if not _keras_cache(f).is_file()]
    if missing and not download:
        raise DataError(f"keras.datasets.{loader} is not cached: place {' and '.join(missing)} "
                        f"in {_keras_cache('')} (or allow the download: data.params.download"
                        "=true)")
    try:
        (x_tr, y_tr), (x_te, y_te) = module.load_data(start_char=None, oov_char=None,
                                                      index_from=3, **kwargs)
        index = module.get_word_index()
    except Exception as e:  # offline without the cache: one line naming the files
        if _keras_cache(fname).is_file() and _keras_cache(index_fname).is_file():
            raise DataError(f"keras.datasets.{loader}: cannot read {_keras_cache(fname)} "
                            f"({type(e).__name__}: {e})") from None
        raise DataError(f"keras.datasets.{loader} is not cached and could not be downloaded: "
                        f"place {fname} and {index_fname} in {_keras_cache('')}") from None
    words = {i + 3: w for w, i in index.items()}
    decode = lambda seq: " ".join(words.get(int(i), "") for i in seq).strip()  # noqa: E731
    texts = [decode(s) for s in x_tr] + [decode(s) for s in x_te]
    ys = np.concatenate([y_tr, y_te]).astype("int64")
    names = label_names or [str(i) for i in range(int(ys.max()) + 1)]
    y = [names[v] for v in ys]
    n_tr = len(x_tr)
    report = _new_report()
    report["rows"] = len(texts)
    # Keras's test set stays the test split; validation is drawn from its training set.
    return text_classes(texts, y, report, f"keras.datasets.{loader}", names,
                        splits={"test": np.arange(n_tr, len(texts))})


@DATASETS.register("imdb", task="classification", input="text")
def imdb(num_words: int | None = None, download: bool = True) -> RawData:
    """keras.datasets.imdb (25,000 + 25,000 movie reviews, negative/positive), decoded to
    text with its word index; Keras's own train/test split. Cache: `imdb.npz` and
    `imdb_word_index.json` in `~/.keras/datasets` (or `$KERAS_HOME/datasets`); with
    `download=False` a missing cache is a one-line error naming the files."""
    return _keras_text("imdb", "imdb.npz", "imdb_word_index.json", ["negative", "positive"],
                       download, num_words=num_words)


@DATASETS.register("reuters", task="classification", input="text")
def reuters(num_words: int | None = None, download: bool = True) -> RawData:
    """keras.datasets.reuters (11,228 newswires, 46 topics), decoded to text with its word
    index; Keras's own train/test split. Cache: `reuters.npz`, `reuters_word_index.json`."""
    return _keras_text("reuters", "reuters.npz", "reuters_word_index.json", None, download,
                       num_words=num_words)


# ----------------------------------------------------------------------------- reviews

_ASPECTS = ["food", "service", "staff", "delivery", "room", "price", "screen", "battery",
            "app", "driver", "coffee", "music"]
_GOOD = ["good", "great", "excellent", "friendly", "fast", "lovely", "fine", "nice"]
_BAD = ["bad", "terrible", "awful", "rude", "slow", "broken", "poor", "cold"]
_OPENERS = ["", "", "honestly", "i think", "overall", "to be fair", "well"]
_INTENS = ["", "", "really", "very", "quite"]
REVIEW_LABELS = ["negative", "positive", "question"]


def _clause(rng, aspect: str, positive: bool, negated: str | None = None) -> str:
    """`the food was (really) good`; with `negated` ("not"/"never") the adjective has the
    opposite sentiment ("never bad"), so the clause still means `positive`."""
    words = _GOOD if positive != (negated is not None) else _BAD
    verb = ["was", "is"][rng.integers(2)]
    mid = negated or _INTENS[rng.integers(len(_INTENS))]
    return " ".join(w for w in ("the", aspect, verb, mid, words[rng.integers(len(words))]) if w)


@DATASETS.register("reviews", task="classification", input="text")
def reviews(n: int = 3000, seed: int = 0) -> RawData:
    """Generated short reviews (negative / positive / question) whose labels depend on
    word order, so a bag-of-words model cannot get them all right.

    Forms (balanced): a plain clause ("the food was great"); negation ("the
    service was not good", "the app is never slow"); contrast, where the clause
    after "but" decides ("the room was lovely but the staff was rude" is
    negative, the same words the other way round positive: identical bags of
    words, opposite labels); questions by inversion ("was the coffee cold"
    uses the words of "the coffee was cold"). Seeded; no download.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        form = rng.integers(4)
        a, b = rng.choice(len(_ASPECTS), 2, replace=False)
        pos = bool(rng.integers(2))
        if form == 0:
            t, label = _clause(rng, _ASPECTS[a], pos), pos
        elif form == 1:
            t, label = _clause(rng, _ASPECTS[a], pos, ["not", "never"][rng.integers(2)]), pos
        elif form == 2:
            first = _clause(rng, _ASPECTS[a], not pos)
            t, label = f"{first} but {_clause(rng, _ASPECTS[b], pos)}", pos
        else:
            words = (_GOOD if pos else _BAD)
            verb = ["was", "is"][rng.integers(2)]
            t, label = f"{verb} the {_ASPECTS[a]} {words[rng.integers(len(words))]}", None
        opener = _OPENERS[rng.integers(len(_OPENERS))]
        t = f"{opener} {t}".strip()
        if form == 3 and rng.random() < 0.5:
            t += " ?"
        texts.append(t)
        labels.append("question" if label is None else REVIEW_LABELS[int(label)])
    report = _new_report()
    report["rows"] = n
    return text_classes(texts, labels, report, "reviews", REVIEW_LABELS)
