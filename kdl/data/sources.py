"""Built-in datasets: scikit-learn's bundled sets, and the user's .npz and CSV files."""

from __future__ import annotations

import csv
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
    return p


@DATASETS.register("npz", task="any", input="any")
def npz(path: str | None = None, task: str = "classification", target: str | None = None,
        label_names: list[str] | None = None) -> RawData:
    """A NumPy `.npz` with arrays `x` and `y`, optionally split index arrays.

    Split keys, if present: `train_idx`, `val_idx`, `test_idx` (example indices).
    Alternatively `x_train/y_train`, `x_val/y_val`, `x_test/y_test` arrays.
    """
    p = _require_file(path, "npz")
    with np.load(p) as f:
        keys = set(f.files)
        if {"x", "y"} <= keys:
            x, y = f["x"], f["y"]
            splits = {k[:-4]: f[k] for k in ("train_idx", "val_idx", "test_idx") if k in keys}
        elif {"x_train", "y_train"} <= keys:
            parts = [s for s in ("train", "val", "test") if f"x_{s}" in keys]
            xs = [f[f"x_{s}"] for s in parts]
            ys = [f[f"y_{s}"] for s in parts]
            x, y = np.concatenate(xs), np.concatenate(ys)
            bounds = np.cumsum([0] + [len(a) for a in xs])
            splits = {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(parts)}
        else:
            raise DataError(
                f"{p} has arrays {sorted(keys)}; expected 'x' and 'y' "
                "(or 'x_train', 'y_train', optionally '_val' and '_test')"
            )
    return RawData(x, y, task, list(label_names or []), splits)


@DATASETS.register("csv", task="any", input="table")
def csv_table(path: str | None = None, target: str | None = None, task: str = "classification",
              label_names: list[str] | None = None) -> RawData:
    """A CSV file with a header row: numeric feature columns and one target column.

    For classification, target values may be strings; they become class ids in
    sorted order and their names become the label names.
    """
    p = _require_file(path, "csv")
    with p.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(f"{p} has no data rows under its header")
    header, body = rows[0], rows[1:]
    if target is None:
        raise DataError(f"the csv dataset needs data.target=<column>; columns: {header}")
    if target not in header:
        raise DataError(f"target column {target!r} is not in {p.name}; columns: {header}")
    t = header.index(target)
    try:
        x = np.array([[float(v) for i, v in enumerate(r) if i != t] for r in body], "float32")
    except ValueError as e:
        raise DataError(f"{p.name}: feature columns must be numeric ({e})") from None
    raw_y = [r[t] for r in body]
    if task == "classification":
        names = label_names or sorted(set(raw_y), key=lambda v: (len(v), v))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(raw_y) - index.keys())
        if unknown:
            raise DataError(f"{p.name}: target values {unknown} are not in label_names")
        y = np.array([index[v] for v in raw_y], "int32")
        return RawData(x, y, task, list(names))
    return RawData(x, np.array(raw_y, "float32"), task)


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
def shapes(per_class: int = 300, classes: int = 5, seed: int = 0, image_size=(64, 64),
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
