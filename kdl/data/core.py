"""Data containers, splitting, normalization and the tf.data pipeline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdl.registry import DATASETS

TASKS = ("classification", "regression")


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
        y: targets: int class ids for classification, floats for regression;
            `(n, length)` class ids are a class per position (sequences).
        task: "classification" or "regression".
        label_names: class names, index = class id (classification only).
        splits: optional predefined split of example indices,
            `{"train": idx, "val": idx, "test": idx}`; missing ones are drawn.
        info: facts about the data a consumer needs, e.g. `{"start_id": 1}`
            for greedy decoding of a generated sequence task.
    """

    x: np.ndarray | tuple[np.ndarray, ...]
    y: np.ndarray
    task: str = "classification"
    label_names: list[str] = field(default_factory=list)
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(f"task must be one of {TASKS}, got {self.task!r}")
        if is_text(self.x):  # raw strings: tokenized after splitting (kdl.data.tokenizers)
            self.x = np.array([str(t) for t in self.x], dtype=object)
        elif isinstance(self.x, tuple | list):
            self.x = tuple(np.asarray(a, "int32" if np.issubdtype(np.asarray(a).dtype,
                                                                  np.integer) else "float32")
                           for a in self.x)
            if len({len(a) for a in self.x}) != 1:
                raise DataError(f"the inputs have different example counts: "
                                f"{[len(a) for a in self.x]}")
        else:
            self.x = np.asarray(self.x, dtype="float32")
        if num_examples(self.x) != len(self.y):
            raise DataError(f"x has {num_examples(self.x)} examples but y has {len(self.y)}")
        if self.task == "classification":
            self.y = np.asarray(self.y).astype("int32")
            if not self.label_names:
                self.label_names = [str(i) for i in range(int(self.y.max()) + 1)]
        else:
            self.y = np.asarray(self.y, dtype="float32")


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
    x: np.ndarray | tuple[np.ndarray, ...]
    y: np.ndarray
    text: np.ndarray | None = None  # text datasets: the raw strings `x` was tokenized from

    def __len__(self) -> int:
        return num_examples(self.x)

    def head(self, n: int) -> Split:
        """The first `n` examples, in memory."""
        return Split(take(self.x, slice(0, n)), self.y[:n])


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
    # Streamed files: what was read and skipped (`data_report.json`); None for arrays.
    files_report: dict[str, Any] | None = None
    # The training split's augmentation, `(x, y) -> (x, y)` on batches in tf.data.
    augment: Any = None

    @property
    def input_shape(self) -> tuple:
        """One example's shape; a tuple of shapes for several inputs."""
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


def _draw_splits(raw: RawData, val_fraction: float, test_fraction: float, seed: int):
    n = num_examples(raw.x)
    given = {k: np.asarray(v, dtype="int64") for k, v in raw.splits.items()}
    if {"train", "val", "test"} <= given.keys():
        return given["train"], given["val"], given["test"]
    rng = np.random.default_rng(seed)
    used = np.concatenate(list(given.values())) if given else np.array([], "int64")
    rest = rng.permutation(np.setdiff1d(np.arange(n), used))
    n_test = 0 if "test" in given else int(round(test_fraction * n))
    n_val = 0 if "val" in given else int(round(val_fraction * n))
    if len(rest) - n_test - n_val < 1:
        raise DataError(
            f"dataset has {n} examples: too few for val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}. Lower the fractions or add data."
        )
    test = given.get("test", rest[:n_test])
    val = given.get("val", rest[n_test:n_test + n_val])
    train = given.get("train", rest[n_test + n_val:])
    return train, val, test


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

    raw = DATASETS.build(name, **options)
    if hasattr(raw, "make_splits"):  # files streamed from disk (kdl.data.images)
        splits = raw.make_splits(val_fraction, test_fraction, seed, normalize, cache_dir)
        splits.augment = build_augment(augment or [], len(splits.label_names), seed)
        return splits
    tr, va, te = _draw_splits(raw, val_fraction, test_fraction, seed)
    if is_text(raw.x):
        from kdl.data.tokenizers import fit_tokenizer, tokenize, tokenizer_spec

        tok = fit_tokenizer(raw.x[tr], **(tokenizer or {}))
        spec = tokenizer_spec(tok)
        split = lambda idx: Split(tokenize(tok, raw.x[idx]), raw.y[idx], raw.x[idx])  # noqa: E731
        s_tr, s_va, s_te = split(tr), split(va), split(te)
        info = {**raw.info, "tokenizer": spec, "vocab_size": spec["vocab_size"],
                "sequence_length": spec["sequence_length"]}
        return DataSplits(
            train=s_tr, val=s_va, test=s_te, task=raw.task, label_names=list(raw.label_names),
            normalizer=Normalizer(np.zeros(0, "float32"), np.ones(0, "float32")),
            fingerprint=fingerprint(s_tr.x, s_va.x, s_te.x, raw.y, tr, va, te), info=info)
    if is_multi_input(raw.x):
        if normalize:
            raise DataError(f"dataset {name!r} feeds {len(raw.x)} inputs (e.g. token ids), "
                            "which are not standardized: set data.normalize=false")
        norm = Normalizer(np.zeros(0, "float32"), np.ones(0, "float32"))  # nothing applied
        split = lambda idx: Split(take(raw.x, idx), raw.y[idx])  # noqa: E731
        arrays = raw.x
    else:
        norm = fit_normalizer(normalize, raw.x[tr])
        split = lambda idx: Split(norm(raw.x[idx]), raw.y[idx])  # noqa: E731
        arrays = (raw.x,)
    return DataSplits(
        train=split(tr), val=split(va), test=split(te),
        task=raw.task, label_names=list(raw.label_names), normalizer=norm,
        fingerprint=fingerprint(*arrays, raw.y, tr, va, te), info=dict(raw.info),
        augment=build_augment(augment or [], len(raw.label_names), seed),
    )


def make_tf_dataset(split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    targets: bool = True, drop_remainder: bool = False, augment=None):
    """A cached, prefetched `tf.data.Dataset` of `(x, y)` batches.

    Keras 3 consumes `tf.data` on every backend (TensorFlow, JAX, PyTorch).
    Several inputs come as a tuple `((x0, x1, ...), y)`. Under several
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
    ds = tf.data.Dataset.from_tensor_slices((x, split.y) if targets else x)
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
