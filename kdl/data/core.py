"""Data containers, splitting, normalization and the tf.data pipeline."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdl.registry import DATASETS

TASKS = ("classification", "regression")
NONFINITE = ("error", "drop")  # what load_splits does with NaN/inf inputs


class DataError(ValueError):
    """Data that cannot be used as configured; the message says what to fix."""


@dataclass
class RawData:
    """Every example of a dataset, before splitting.

    Args:
        x: inputs, float32, first axis is the example axis. Images are
            `(n, height, width, channels)`, tables `(n, features)`. A tuple of
            arrays feeds a model with several inputs (e.g. `(source_ids,
            target_in_ids)` of a seq2seq model); there, integer arrays (token
            ids) stay int32 and the others become float32.
        y: targets. Classification follows the label rules of `class_ids`
            (integer class ids 0..K-1, or strings mapped to classes);
            `(n, length)` class ids are a class per position (sequences).
            Regression: numbers.
        task: "classification" or "regression".
        label_names: class names, index = class id (classification only).
        splits: optional predefined split of example indices,
            `{"train": idx, "val": idx, "test": idx}`; missing ones are drawn.
        info: facts about the data a consumer needs, e.g. `{"start_id": 1}`
            for greedy decoding of a generated sequence task.
        locate: names example `i` in the user's terms for error messages
            (e.g. "line 12" of a CSV, "x_test[3]" of an .npz).
        columns: named per-example values kept beside the inputs, as loaded (not
            normalized), e.g. a sensitive attribute for fairness reports and
            reweighing, whether or not it is also a feature.
    """

    x: np.ndarray | tuple[np.ndarray, ...]
    y: np.ndarray
    task: str = "classification"
    label_names: list[str] = field(default_factory=list)
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    locate: Callable[[int], str] | None = field(default=None, repr=False)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(f"task must be one of {TASKS}, got {self.task!r}")
        if is_text(self.x):  # raw strings: tokenized after splitting (kdl.data.tokenizers)
            self.x = np.array([str(t) for t in self.x], dtype=object)
        elif isinstance(self.x, tuple | list):
            self.x = tuple(_numeric(a, f"x[{i}]") for i, a in enumerate(self.x))
            if len({len(a) for a in self.x}) != 1:
                raise DataError(f"the inputs have different example counts: "
                                f"{[len(a) for a in self.x]}")
        else:
            self.x = _numeric(self.x, "x")
        if num_examples(self.x) != len(self.y):
            raise DataError(f"x has {num_examples(self.x)} examples but y has {len(self.y)}")
        self.columns = {k: np.asarray(v) for k, v in self.columns.items()}
        for k, v in self.columns.items():
            if len(v) != len(self.y):
                raise DataError(f"column {k!r} has {len(v)} values for {len(self.y)} examples")
        if self.task == "classification":
            self.y, self.label_names = class_ids(self.y, self.label_names, self.where)
        else:
            self.y = _numeric(self.y, "y (regression targets)", integers=False)

    def where(self, i: int) -> str:
        return self.locate(int(i)) if self.locate else f"example {int(i)}"


def _numeric(a, what: str, integers: bool = True) -> np.ndarray:
    """`a` as int32 (integer arrays, when `integers`) or float32; anything else is refused."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what} holds {a.dtype} values ({_kind(a)}); inputs must be numbers")
    if a.ndim == 0:
        raise DataError(f"{what} is a single number, not an array of examples")
    return a.astype("int32" if integers and a.dtype.kind in "biu" else "float32")


def _kind(a: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "O": "Python objects", "M": "dates",
            "m": "time deltas", "c": "complex numbers", "V": "records"}.get(a.dtype.kind, "?")


def _label_order(values: set[str]) -> list[str]:
    """Numeric strings in numeric order ("-1" < "2" < "10"), anything else sorted."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def class_ids(y, label_names=(), where: Callable[[int], str] = lambda i: f"example {i}"
              ) -> tuple[np.ndarray, list[str]]:
    """Class ids (int32) and class names for classification targets.

    The label rules (docs/errors.md):
    - integers (or whole floats such as 1.0) are class ids and must be 0..K-1,
      K = `len(label_names)` when names are given, else the largest id + 1;
    - strings are classes: each distinct value becomes a class, ids in sorted
      order (numeric strings numerically), the value its name; with
      `label_names` given, that list is the order and other values are refused.
    The mapping travels as the label names (`preprocessing.json`, the mobile
    bundle's contract `labels`). Anything else (negative ids, fractions, NaN,
    objects) raises `DataError` naming the first offending example.
    """
    y = np.asarray(y)
    names = [str(n) for n in label_names or ()]
    if y.dtype.kind in "US":
        values = y.astype(str)
        names = names or _label_order(set(values.ravel().tolist()))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(values.ravel().tolist()) - index.keys())
        if unknown:
            raise DataError(f"labels {unknown[:5]} are not in label_names {names}")
        ids = np.vectorize(index.__getitem__, otypes=["int32"])(values) if values.size else (
            np.zeros(values.shape, "int32"))
        return ids, names
    if y.dtype.kind not in "biuf":
        raise DataError(f"labels hold {y.dtype} values ({_kind(y)}); classification labels "
                        "must be integers 0..K-1 or strings")
    flat = y.reshape(len(y), -1) if y.ndim else y.reshape(1, -1)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            value = flat[rows[0]][bad[rows[0]]][0]
            raise DataError(f"{len(rows)} labels are not whole numbers (first: {where(rows[0])} "
                            f"has {value.item()!r}); classification labels must be integers "
                            "0..K-1 or strings (for regression set data.task=regression)")
    ids = flat.astype("int64")
    if ids.size and ids.min() < 0:
        rows = np.flatnonzero((ids < 0).any(axis=1))
        raise DataError(f"{len(rows)} labels are negative (first: {where(rows[0])} has "
                        f"{int(ids[rows[0]].min())}); class ids must be 0..K-1. Renumber them, "
                        "or store the labels as strings to have them mapped to classes")
    k = len(names) if names else (int(ids.max()) + 1 if ids.size else 0)
    if ids.size and ids.max() >= k:
        rows = np.flatnonzero((ids >= k).any(axis=1))
        raise DataError(f"{len(rows)} labels are >= {k}, the number of label_names (first: "
                        f"{where(rows[0])} has {int(ids[rows[0]].max())}); class ids must be "
                        f"0..{k - 1}")
    return ids.reshape(y.shape).astype("int32"), names or [str(i) for i in range(k)]


def is_text(x) -> bool:
    """True for a 1-D array of strings (a text dataset before tokenization)."""
    return (isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in "OUS"
            and (len(x) == 0 or isinstance(x[0], str | bytes)))


def is_multi_input(x) -> bool:
    """True for a tuple of input arrays (a model with several inputs)."""
    return isinstance(x, tuple | list)


def num_examples(x) -> int:
    return len(x[0]) if is_multi_input(x) else len(x)


def model_input(x):
    """`x` as Keras takes it: the array, or a list of arrays for several inputs."""
    return list(x) if is_multi_input(x) else x


def take(x, idx):
    """`x[idx]` for one input array or each array of a tuple of inputs."""
    return tuple(a[idx] for a in x) if is_multi_input(x) else x[idx]


def sample(split, idx):
    """`split.x[idx]`: decodes only those files for a split of image files."""
    return split.subset(idx).x if hasattr(split, "subset") else take(split.x, idx)


@dataclass
class Normalizer:
    """`(x - mean) / std`, per feature (tables) or per channel (images).

    The statistics come from the training split only and travel with the
    model (`preprocessing.json`, the mobile bundle's contract).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalizer:
        axes = tuple(range(x.ndim - 1)) if x.ndim > 2 else (0,)
        mean = x.mean(axis=axes)
        std = x.std(axis=axes)
        std = np.where(std < 1e-6, 1.0, std)  # constant features pass through unscaled
        return cls(mean.astype("float32"), std.astype("float32"))

    @classmethod
    def fit_symmetric(cls, x: np.ndarray) -> Normalizer:
        """Maps each feature/channel's training range `[min, max]` onto `[-1, 1]`.

        The same `(x - mean) / std` form (mean = the range's midpoint, std = its
        half-width), so it travels like the standardizer.
        """
        axes = tuple(range(x.ndim - 1)) if x.ndim > 2 else (0,)
        lo, hi = x.min(axis=axes), x.max(axis=axes)
        half = (hi - lo) / 2
        half = np.where(half < 1e-6, 1.0, half)  # constant features pass through unscaled
        return cls(((hi + lo) / 2).astype("float32"), half.astype("float32"))

    @classmethod
    def identity(cls, x: np.ndarray) -> Normalizer:
        n = x.shape[-1]
        return cls(np.zeros(n, "float32"), np.ones(n, "float32"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype("float32")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "formula": "(x - mean) / std, over the last axis"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        return cls(np.asarray(d["mean"], "float32"), np.asarray(d["std"], "float32"))


@dataclass
class Split:
    """Inputs and targets of one split; `columns`: the dataset's side columns for these
    examples (`RawData.columns`); `weight`: per-example training weights, or None."""

    x: np.ndarray | tuple[np.ndarray, ...]
    y: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    weight: np.ndarray | None = None
    text: np.ndarray | None = None  # text datasets: the raw strings `x` was tokenized from

    def __len__(self) -> int:
        return num_examples(self.x)

    def head(self, n: int) -> Split:
        """The first `n` examples, in memory."""
        return Split(take(self.x, slice(0, n)), self.y[:n],
                     {k: v[:n] for k, v in self.columns.items()},
                     None if self.weight is None else self.weight[:n])

    def column(self, name: str) -> np.ndarray:
        """A side column by name; the error lists the dataset's columns."""
        if name not in self.columns:
            have = ", ".join(self.columns) or "none"
            raise DataError(f"the dataset has no column {name!r} (its columns: {have}); "
                            "name one of them")
        return self.columns[name]


@dataclass
class DataSplits:
    """Normalized train/val/test splits and what is needed to reproduce them."""

    train: Split
    val: Split
    test: Split
    task: str
    label_names: list[str]
    normalizer: Normalizer
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # NaN/inf examples dropped, per split
    # Streamed files: what was read and skipped (`data_report.json`); None for arrays.
    files_report: dict[str, Any] | None = None
    # The training split's augmentation, `(x, y) -> (x, y)` on batches in tf.data.
    augment: Any = None

    @property
    def input_shape(self) -> tuple:
        """One example's shape; a tuple of shapes for several inputs."""
        if hasattr(self.train, "spec"):  # image files: from the spec, without decoding them
            return tuple(self.train.spec.input_shape)
        if is_multi_input(self.train.x):
            return tuple(tuple(a.shape[1:]) for a in self.train.x)
        return tuple(self.train.x.shape[1:])

    @property
    def num_outputs(self) -> int:
        if self.task == "classification":
            return len(self.label_names)
        return 1 if self.train.y.ndim == 1 else int(self.train.y.shape[-1])


def fingerprint(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _share(fraction: float, n: int) -> int:
    """`fraction` of `n` examples, at least one when the fraction is positive."""
    return max(1, int(round(fraction * n))) if fraction > 0 and n else 0


def _draw_splits(raw: RawData, val_fraction: float, test_fraction: float, seed: int):
    """Train/val/test example indices.

    Splits the data defines (`raw.splits`) are kept. The missing ones are drawn
    (seeded) from the training part when the data defines one (an `.npz` with
    `x_train`/`x_test` only gets its validation split from `x_train`), else
    from the examples not yet assigned; the fractions are shares of all examples.
    """
    n = num_examples(raw.x)
    given = {k: np.asarray(v, dtype="int64").reshape(-1) for k, v in raw.splits.items()}
    for k, idx in given.items():
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"the {k} split's indices must be in 0..{n - 1}, got "
                            f"{int(idx.min())}..{int(idx.max())}")
    if len(given) > 1:
        everything = np.concatenate(list(given.values()))
        if len(np.unique(everything)) != len(everything):
            raise DataError(f"the given splits {sorted(given)} share examples: each example "
                            "belongs to one split")
    if {"train", "val", "test"} <= given.keys():
        return given["train"], given["val"], given["test"]
    rng = np.random.default_rng(seed)
    if "train" in given:
        pool, source = given["train"], f"the {len(given['train'])} training examples"
    else:
        used = np.concatenate(list(given.values())) if given else np.array([], "int64")
        pool = np.setdiff1d(np.arange(n), used)
        source = f"{len(pool)} examples" + (" not in the given splits" if given else "")
    pool = rng.permutation(pool)
    n_test = 0 if "test" in given else _share(test_fraction, n)
    n_val = 0 if "val" in given else _share(val_fraction, n)
    if len(pool) - n_test - n_val < 1:
        drawn = " + ".join(f"{name} {k} (data.{name}_fraction={f})"
                           for name, k, f in (("val", n_val, val_fraction),
                                              ("test", n_test, test_fraction)) if k)
        raise DataError(f"cannot split {source}: {drawn} leave {len(pool) - n_test - n_val} "
                        "for training (needs >= 1). Lower the fractions or add data")
    test = given.get("test", pool[:n_test])
    val = given.get("val", pool[n_test:n_test + n_val])
    return pool[n_test + n_val:], val, test


def _nonfinite_rows(raw: RawData) -> tuple[np.ndarray, Callable[[int], str]]:
    """A mask of the examples holding NaN/inf (inputs, or regression targets), and a
    function that says where in example `i` the first one sits."""
    arrays = [(f"x[{i}]" if is_multi_input(raw.x) else "", a)
              for i, a in enumerate(raw.x if is_multi_input(raw.x) else (raw.x,))]
    if raw.task == "regression":
        arrays.append(("target", raw.y))
    masks = []
    for _, a in arrays:
        bad = ~np.isfinite(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
        masks.append(bad)
    rows = np.zeros(num_examples(raw.x), bool)
    for m in masks:
        rows |= m.reshape(len(m), -1).any(axis=1) if m.ndim > 1 else m

    def detail(i: int) -> str:
        for (name, a), m in zip(arrays, masks, strict=True):
            if m[i].any():
                if a.ndim == 1:
                    return f"{name or 'value'} = {a[i]}"
                pos = tuple(int(p) for p in np.argwhere(m[i])[0])
                at = f"feature {pos[0]}" if len(pos) == 1 else f"position {pos}"
                return f"{name} {at} = {a[i][pos]}".strip()
        return ""

    return rows, detail


def _check_finite(raw: RawData, parts: dict[str, np.ndarray], nonfinite: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Refuse (`nonfinite="error"`) or drop (`"drop"`) examples holding NaN/inf."""
    if nonfinite not in NONFINITE:
        raise DataError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    rows, detail = _nonfinite_rows(raw)
    counts = {k: int(rows[idx].sum()) for k, idx in parts.items()}
    if not rows.any():
        return parts, {}
    if nonfinite == "error":
        first_split, idx = next((k, idx) for k, idx in parts.items() if rows[idx].any())
        i = int(idx[rows[idx]][0]) if len(idx) else int(np.flatnonzero(rows)[0])
        where = ", ".join(f"{k} {c}" for k, c in counts.items())
        raise DataError(f"{int(rows.sum())} examples hold NaN or inf ({where}; first: "
                        f"{first_split} {raw.where(i)}, {detail(i)}). Clean the data, or set "
                        "data.nonfinite=drop to drop them (counted and reported)")
    return {k: idx[~rows[idx]] for k, idx in parts.items()}, counts


def fit_normalizer(normalize: bool | str, x: np.ndarray) -> Normalizer:
    if normalize is True or normalize == "standardize":
        return Normalizer.fit(x)
    if normalize == "symmetric":
        return Normalizer.fit_symmetric(x)
    if normalize is False:
        return Normalizer.identity(x)
    raise DataError(f"normalize must be True, False, 'standardize' or 'symmetric', "
                    f"got {normalize!r}")


def load_splits(
    name: str,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool | str = True,
    nonfinite: str = "error",
    cache_dir: str | None = None,
    augment: list[dict[str, Any]] | None = None,
    tokenizer: dict[str, Any] | None = None,
    **options: Any,
) -> DataSplits:
    """Load dataset `name`, split it (seeded) and normalize with train statistics.

    Args:
        name: a name in `DATASETS` ("digits", "iris", "npz", "csv", ...).
        val_fraction, test_fraction: shares of all examples, when the dataset
            does not define its own split.
        seed: the split's random seed.
        normalize: True or "standardize": standardize inputs with the training
            split's statistics; "symmetric": scale each feature/channel's training
            range to [-1, 1] (for tanh generators); False: leave them as loaded.
        nonfinite: "error": examples holding NaN or inf are refused (`DataError`
            naming how many, in which split, and the first); "drop": they are
            dropped, and the counts per split are in `DataSplits.dropped`.
        tokenizer: text datasets: the tokenizer's settings
            (`kdl.data.tokenizers.fit_tokenizer` arguments); learned on the
            training split only, applied to every split in tf.data. The splits'
            `x` are int32 token ids, `text` the raw strings; `info["tokenizer"]`
            is the tokenizer's spec (what the app must reproduce).
        cache_dir: streamed image datasets: where `tf.data` caches decoded images
            (None: decode every epoch).
        augment: Keras preprocessing layers by name for the training split,
            `[{"name": "RandomFlip", "mode": "horizontal"}, ...]` (`kdl.data.augment`).
        **options: passed to the dataset function (e.g. `path`, `target`).
    """
    from kdl.data.augment import build_augment

    for k, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise DataError(f"{k} must be in [0, 1), got {f}")
    raw = DATASETS.build(name, **options)
    if hasattr(raw, "make_splits"):  # files streamed from disk (kdl.data.images)
        splits = raw.make_splits(val_fraction, test_fraction, seed, normalize, cache_dir)
        splits.augment = build_augment(augment or [], len(splits.label_names), seed)
        return splits
    parts = dict(zip(("train", "val", "test"),
                     _draw_splits(raw, val_fraction, test_fraction, seed), strict=True))
    if is_text(raw.x):  # strings: nothing non-finite; token ids after the split
        if raw.task == "classification":
            _check_classes(raw, parts["train"])
        return _text_splits(raw, parts, tokenizer)
    parts, dropped = _check_finite(raw, parts, nonfinite)
    if not len(parts["train"]):
        raise DataError(f"dataset {name!r} has no training examples left after dropping "
                        f"{sum(dropped.values())} with NaN or inf")
    if raw.task == "classification":
        _check_classes(raw, parts["train"])
    tr, va, te = parts["train"], parts["val"], parts["test"]
    cols = lambda idx: {k: v[idx] for k, v in raw.columns.items()}  # noqa: E731
    if is_multi_input(raw.x):
        if normalize:
            raise DataError(f"dataset {name!r} feeds {len(raw.x)} inputs (e.g. token ids), "
                            "which are not standardized: set data.normalize=false")
        norm = Normalizer(np.zeros(0, "float32"), np.ones(0, "float32"))  # nothing applied
        split = lambda idx: Split(take(raw.x, idx), raw.y[idx], cols(idx))  # noqa: E731
        arrays = raw.x
    else:
        norm = fit_normalizer(normalize, raw.x[tr])
        split = lambda idx: Split(norm(raw.x[idx]), raw.y[idx], cols(idx))  # noqa: E731
        arrays = (raw.x,)
    return DataSplits(
        train=split(tr), val=split(va), test=split(te),
        task=raw.task, label_names=list(raw.label_names), normalizer=norm,
        fingerprint=fingerprint(*arrays, raw.y, tr, va, te), info=dict(raw.info),
        dropped=dropped,
        augment=build_augment(augment or [], len(raw.label_names), seed),
    )


def _text_splits(raw: RawData, parts: dict[str, np.ndarray], tokenizer) -> DataSplits:
    """Learn the tokenizer on the training texts; every split becomes int32 ids (+ text)."""
    from kdl.data.tokenizers import fit_tokenizer, tokenize, tokenizer_spec

    tok = fit_tokenizer(raw.x[parts["train"]], **(tokenizer or {}))
    spec = tokenizer_spec(tok)
    ids = tokenize(tok, np.concatenate([raw.x[idx] for idx in parts.values()]))  # one pass
    ends = np.cumsum([len(idx) for idx in parts.values()])
    s = {k: Split(part, raw.y[idx], text=raw.x[idx])
         for (k, idx), part in zip(parts.items(), np.split(ids, ends[:-1]), strict=True)}
    return DataSplits(
        train=s["train"], val=s["val"], test=s["test"], task=raw.task,
        label_names=list(raw.label_names),
        normalizer=Normalizer(np.zeros(0, "float32"), np.ones(0, "float32")),
        fingerprint=fingerprint(*(v.x for v in s.values()), raw.y, *parts.values()),
        info={**raw.info, "tokenizer": spec, "vocab_size": spec["vocab_size"],
              "sequence_length": spec["sequence_length"]})


def _check_classes(raw: RawData, train: np.ndarray) -> None:
    """A classifier needs at least two classes in its training split."""
    present = np.unique(raw.y[train])
    if len(present) < 2:
        everywhere = np.unique(raw.y)
        scope = ("the whole dataset" if len(everywhere) < 2 else
                 f"the training split ({len(train)} examples; the dataset has "
                 f"{len(everywhere)} classes)")
        name = raw.label_names[int(present[0])] if len(present) else "none"
        raise DataError(f"{scope} holds one class only (label {name!r}): a classifier needs "
                        "at least two; for one-class data use a regression or generative "
                        "recipe")


def make_tf_dataset(split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    targets: bool = True, drop_remainder: bool = False, augment=None):
    """A cached, prefetched `tf.data.Dataset` of `(x, y)` batches.

    Keras 3 consumes `tf.data` on every backend (TensorFlow, JAX, PyTorch).
    Several inputs come as a tuple `((x0, x1, ...), y)`; a split with `weight`
    gives `(x, y, weight)` (Keras reads the third item as sample weights). Under several
    processes each takes its part of every batch (`AutoShardPolicy.DATA`: the
    arrays are in memory, there are no files to split). A split of files
    (`kdl.data.images.ImageSplit`) streams them. `augment(x, y) -> (x, y)` runs
    on each batch (the training split's augmentation).
    """
    import tensorflow as tf

    if hasattr(split, "dataset"):
        return split.dataset(batch_size, shuffle=shuffle, seed=seed, targets=targets,
                             drop_remainder=drop_remainder, augment=augment)

    x = tuple(split.x) if is_multi_input(split.x) else split.x
    weighted = targets and split.weight is not None
    if weighted and augment is not None:
        raise DataError("per-example weights (train.reweigh) and augmentation together "
                        "are not supported")
    ds = tf.data.Dataset.from_tensor_slices(
        ((x, split.y, split.weight.astype("float32")) if weighted else (x, split.y))
        if targets else x)
    ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).with_options(options)
    if augment is not None:
        if not targets or is_multi_input(split.x):
            raise DataError("augmentation needs one image input with targets")
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
