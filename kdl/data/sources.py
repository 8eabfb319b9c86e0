"""Built-in datasets: scikit-learn's bundled sets, and the user's .npz and CSV files."""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np

from kdl.data.core import DataError, RawData
from kdl.registry import DATASETS


def _sklearn(loader_name: str) -> RawData:
    from sklearn import datasets

    bunch = getattr(datasets, loader_name)()
    return RawData(bunch.data, bunch.target, "classification",
                   [str(n) for n in bunch.target_names])


@DATASETS.register("digits", task="classification", input="image 8x8x1")
def digits() -> RawData:
    """scikit-learn's handwritten digits: 1,797 8x8 grey images (0..16), 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype("float32")[..., None]
    return RawData(x, bunch.target, "classification", [str(n) for n in bunch.target_names])


@DATASETS.register("digits_captions", task="classification", inputs=2,
                   input="image 8x8x1 + caption 4 tokens")
def digits_captions(length: int = 4, noise_tokens: int = 9, seed: int = 0) -> RawData:
    """scikit-learn's digits paired with a generated token "caption" (a CLIP pair).

    `x = (images, captions)`: images scaled to [0, 1] `(n, 8, 8, 1)`, captions
    `(n, length)` int32 holding the digit's own token (`1 + digit`, ids 1..10)
    at a random position among noise tokens (ids 11 .. 10 + noise_tokens); id 0
    is padding. `y` is the digit, for linear probes only. Seeded.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    y = bunch.target
    captions = rng.integers(11, 11 + noise_tokens, size=(len(y), length))
    captions[np.arange(len(y)), rng.integers(0, length, len(y))] = y + 1
    images = (bunch.images / 16.0).astype("float32")[..., None]
    return RawData((images, captions.astype("int32")), y, "classification",
                   [str(n) for n in bunch.target_names],
                   info={"vocab_size": 11 + noise_tokens, "text_length": length})


@DATASETS.register("iris", task="classification", input="table 4")
def iris() -> RawData:
    """scikit-learn's iris: 150 flowers, 4 features, 3 classes."""
    return _sklearn("load_iris")


@DATASETS.register("wine", task="classification", input="table 13")
def wine() -> RawData:
    """scikit-learn's wine: 178 wines, 13 features, 3 cultivars."""
    return _sklearn("load_wine")


@DATASETS.register("breast_cancer", task="classification", input="table 30")
def breast_cancer() -> RawData:
    """scikit-learn's breast cancer (Wisconsin): 569 cases, 30 features, 2 classes."""
    return _sklearn("load_breast_cancer")


def _require_file(path: str | None, kind: str) -> Path:
    if not path:
        raise DataError(f"the {kind} dataset needs a file: set data.path=<file.{kind}>")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path {str(p)!r} does not exist or is not a file")
    if not os.access(p, os.R_OK):
        raise DataError(f"data.path {str(p)!r} is not readable (permission denied)")
    return p


def _npz_arrays(p: Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz`, read without pickle; a damaged file is a `DataError`."""
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{p.name} holds object arrays (Python objects, e.g. ragged "
                            "lists), which are not loaded (pickle is unsafe): save numeric "
                            "or string arrays") from None
        raise DataError(f"{p.name} is not a readable .npz: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{p.name} is not a readable .npz (truncated or not a NumPy "
                        f"archive): {e}") from None


@DATASETS.register("npz", task="any", input="any")
def npz(path: str | None = None, task: str = "classification", target: str | None = None,
        label_names: list[str] | None = None) -> RawData:
    """A NumPy `.npz` with arrays `x` and `y`, optionally split index arrays.

    Split keys, if present: `train_idx`, `val_idx`, `test_idx` (example indices).
    Alternatively `x_train/y_train`, `x_val/y_val`, `x_test/y_test` arrays; a
    missing `_val` (or `_test`) part is carved from `x_train` (seeded,
    `data.val_fraction` of it). Labels follow `kdl.data.core.class_ids`.
    """
    p = _require_file(path, "npz")
    f = _npz_arrays(p)
    keys = set(f)
    if {"x", "y"} <= keys:
        x, y = f["x"], f["y"]
        splits = {k[:-4]: f[k] for k in ("train_idx", "val_idx", "test_idx") if k in keys}
        locate = lambda i: f"x[{i}]"  # noqa: E731
    elif {"x_train", "y_train"} <= keys:
        parts = [s for s in ("train", "val", "test") if f"x_{s}" in keys]
        missing = [f"y_{s}" for s in parts if f"y_{s}" not in keys]
        if missing:
            raise DataError(f"{p.name} has no {missing[0]} for its x_{missing[0][2:]}")
        xs = [f[f"x_{s}"] for s in parts]
        ys = [f[f"y_{s}"] for s in parts]
        for s_, a, b in zip(parts, xs, ys, strict=True):
            if len(a) != len(b):
                raise DataError(f"{p.name}: x_{s_} has {len(a)} examples but y_{s_} {len(b)}")
        shapes = {a.shape[1:] for a in xs}
        if len(shapes) > 1:
            raise DataError(f"{p.name}: the parts' examples differ in shape "
                            f"{dict(zip(parts, [a.shape[1:] for a in xs], strict=True))}")
        x, y = np.concatenate(xs), np.concatenate(ys)
        bounds = np.cumsum([0] + [len(a) for a in xs])
        splits = {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(parts)}

        def locate(i: int) -> str:
            k = int(np.searchsorted(bounds, i, side="right")) - 1
            return f"x_{parts[k]}[{i - bounds[k]}]"
    else:
        raise DataError(
            f"{p} has arrays {sorted(keys)}; expected 'x' and 'y' "
            "(or 'x_train', 'y_train', optionally '_val' and '_test')"
        )
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{p.name}: x and y must be arrays of examples, got shapes "
                        f"{x.shape} and {y.shape}")
    return RawData(x, y, task, list(label_names or []), splits, locate=locate)


@DATASETS.register("csv", task="any", input="table")
def csv_table(path: str | None = None, target: str | None = None, task: str = "classification",
              label_names: list[str] | None = None, exclude: list[str] | None = None) -> RawData:
    """A CSV file with a header row: numeric feature columns and one target column.

    Every row has the header's number of cells; features are numbers ("nan"
    and "inf" parse, and are then refused or dropped by `data.nonfinite`). For
    classification, target values are strings mapped to classes
    (`kdl.data.core.class_ids`: numeric strings in numeric order, the value is
    the class name).
    Every column is also kept, as read (strings), as a side column
    (`RawData.columns`: e.g. a sensitive attribute for `evaluate.sensitive` /
    `train.reweigh`); `exclude` names columns that are not features (they may hold text).
    """
    p = _require_file(path, "csv")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{p.name} is not a readable UTF-8 CSV: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    if len(rows) < 2:
        raise DataError(f"{p.name} has no data rows under its header")
    header, body = rows[0], rows[1:]
    if target is None:
        raise DataError(f"the csv dataset needs data.target=<column>; columns: {header}")
    if target not in header:
        raise DataError(f"target column {target!r} is not in {p.name}; columns: {header}")
    lines = [i + 2 for i, r in enumerate(body) if r]  # skip blank lines; 1-based, after header
    body = [r for r in body if r]
    ragged = [(line, len(r)) for line, r in zip(lines, body, strict=True) if len(r) != len(header)]
    if ragged:
        line, n = ragged[0]
        raise DataError(f"{p.name}: {len(ragged)} rows do not have the header's {len(header)} "
                        f"cells (first: line {line} has {n}); fix or remove them")
    t = header.index(target)
    missing = [c for c in exclude or () if c not in header]
    if missing:
        raise DataError(f"excluded columns {missing} are not in {p.name}; columns: {header}")
    skip = {t} | {header.index(c) for c in exclude or ()}
    features = [i for i in range(len(header)) if i not in skip]
    x = np.empty((len(body), len(features)), "float32")
    for row, (line, r) in enumerate(zip(lines, body, strict=True)):
        for col, i in enumerate(features):
            try:
                x[row, col] = float(r[i])
            except ValueError:
                raise DataError(f"{p.name} line {line}, column {header[i]!r}: {r[i]!r} is not a "
                                "number; feature columns must be numeric (or listed in "
                                "data.params.exclude)") from None
    side = {"columns": {h: np.array([r[i] for r in body]) for i, h in enumerate(header)
                        if i != t},
            "info": {"feature_names": [header[i] for i in features]}}
    raw_y = np.array([r[t] for r in body])
    locate = lambda i: f"line {lines[i]}"  # noqa: E731
    if task == "classification":
        return RawData(x, raw_y, task, list(label_names or []), locate=locate, **side)
    try:
        y = raw_y.astype("float32")
    except ValueError:
        bad = next(i for i, v in enumerate(raw_y) if not _is_number(v))
        raise DataError(f"{p.name} line {lines[bad]}: target {raw_y[bad]!r} is not a number "
                        "(regression targets are numbers)") from None
    return RawData(x, y, task, locate=locate, **side)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- images

IMAGE_OPTIONS = ("image_size", "color", "resize", "fit")  # data.* keys of image datasets


def _spec(image_size, color, resize, fit):
    from kdl.data.images import ImageSpec

    return ImageSpec(tuple(image_size), color, resize, fit)


@DATASETS.register("image_folder", task="classification", input="image files", files=True)
def image_folder(path: str | None = None, image_size=(64, 64), color: str = "rgb",
                 resize: str = "bilinear", fit: str = "stretch"):
    """Your photos: `path/<class>/*` (or `path/{train,val,test}/<class>/*`), streamed.

    Without `path`, the generated `shapes` set (written once to Keras's dataset cache).
    """
    from kdl.data.images import image_folder_files
    from kdl.data.shapes import write_shapes

    if path is None:
        path = str(write_shapes())
    return image_folder_files(path, _spec(image_size, color, resize, fit))


@DATASETS.register("image_csv", task="classification", input="image files", files=True)
def image_csv(path: str | None = None, image_size=(64, 64), color: str = "rgb",
              resize: str = "bilinear", fit: str = "stretch"):
    """A CSV `path,label[,split]` of image files (paths relative to the CSV), streamed."""
    from kdl.data.images import image_csv_files

    return image_csv_files(path, _spec(image_size, color, resize, fit))


@DATASETS.register("shapes", task="classification", input="image files", files=True)
def shapes(per_class: int = 1000, classes: int = 5, seed: int = 0, image_size=(64, 64),
           color: str = "rgb", resize: str = "bilinear", fit: str = "stretch"):
    """Generated shapes on photo textures, written as PNG/JPEG class folders, streamed."""
    from kdl.data.images import image_folder_files
    from kdl.data.shapes import write_shapes

    try:
        folder = write_shapes(per_class=per_class, image_size=max(image_size), classes=classes,
                              seed=seed)
    except ValueError as e:
        raise DataError(str(e)) from None
    return image_folder_files(str(folder), _spec(image_size, color, resize, fit))


# ----------------------------------------------------------------------------- keras.datasets

# name -> (module, file(s) the loader reads under $KERAS_HOME/datasets, label names)
KERAS_DATASETS = {
    "mnist": ("mnist", "mnist.npz", [str(i) for i in range(10)]),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist/{train,t10k}-{images,labels}-idx*.gz",
                      ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot"]),
    "cifar10": ("cifar10", "cifar-10-batches-py-target_archive (the cifar-10-python.tar.gz)",
                ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]),
    "cifar100": ("cifar100", "cifar-100-python-target_archive (the cifar-100-python.tar.gz)",
                 [str(i) for i in range(100)]),
}


def _keras_dataset(name: str, limit: int | None) -> RawData:
    import keras

    from kdl.data.shapes import default_root

    module, where, names = KERAS_DATASETS[name]
    try:
        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, module).load_data()
    except Exception as e:  # noqa: BLE001  (offline: URLError, socket errors, HTTP errors)
        raise DataError(
            f"keras.datasets.{module} is not in the Keras cache and could not be downloaded "
            f"({type(e).__name__}); offline, place {where} in {default_root()}") from None
    if limit is not None:
        x_tr, y_tr, x_te, y_te = x_tr[:limit], y_tr[:limit], x_te[:limit], y_te[:limit]
    x = np.concatenate([x_tr, x_te])
    if x.ndim == 3:
        x = x[..., None]
    y = np.concatenate([y_tr, y_te]).reshape(-1)
    n = len(x_tr)
    return RawData(x, y, "classification", names,
                   {"test": np.arange(n, len(x))})  # train and val drawn from its train split


def _register_keras_dataset(name: str, shape: str):
    def load(limit: int | None = None) -> RawData:
        return _keras_dataset(name, limit)

    load.__doc__ = (f"keras.datasets.{KERAS_DATASETS[name][0]} ({shape}; Keras's loader and "
                    "cache; `limit`: the first N of each of its splits).")
    DATASETS.register(name, task="classification", input=f"image {shape}")(load)


for _name, _shape in (("mnist", "28x28x1"), ("fashion_mnist", "28x28x1"),
                      ("cifar10", "32x32x3"), ("cifar100", "32x32x3")):
    _register_keras_dataset(_name, _shape)
