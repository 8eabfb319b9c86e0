"""Image files streamed from disk: class folders, an image CSV, one tf.data pipeline.

A dataset entry here returns `ImageFiles` (paths + labels, nothing decoded);
`load_splits` turns it into `ImageSplit`s whose `dataset()` streams: file
paths -> parallel read + decode + resize -> (optional file cache) -> batch ->
augmentation (training split) -> normalization -> prefetch. Memory does not
grow with the number of files. Every file is decoded once up front by the
same decoder; the ones that fail (corrupt, truncated, zero bytes, not an
image) are skipped and listed in `ImageFiles.skipped`, never a crash.

The preprocessing is fixed by `ImageSpec` and written into the app's
contract; `pipelines/imaging.py` is its NumPy port (resize, crop/pad and
rounding give the same pixels up to float rounding).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdl.data.core import DataError

COLORS = {"rgb": 3, "grayscale": 1}
RESIZE_METHODS = ("bilinear", "nearest")  # both ported to NumPy bit-for-bit
FITS = ("stretch", "crop", "pad")  # aspect ratio: ignore, centre-crop to it, pad to it
# What the decoder reads: JPEG, PNG, BMP, GIF (first frame) and WebP, by content.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP")


@dataclass(frozen=True)
class ImageSpec:
    """How a file becomes a model input.

    Args:
        image_size: `(height, width)` the model takes.
        color: "rgb" (3 channels, R, G, B order) or "grayscale" (1 channel).
        resize: "bilinear" or "nearest" (half-pixel centres, no antialiasing:
            `tf.image.resize`'s default).
        fit: "stretch" (resize to the size, aspect ratio ignored), "crop"
            (centre-crop to the target aspect ratio first, as Keras's
            `crop_to_aspect_ratio`) or "pad" (resize to fit inside, pad with
            zeros around, centred).

    Resized pixels are rounded (half to even) and clipped to `[0, 255]`:
    the model takes what an app holds as uint8 pixels, as float32 (or as
    uint8 in a uint8-input `.tflite`).
    """

    image_size: tuple[int, int] = (64, 64)
    color: str = "rgb"
    resize: str = "bilinear"
    fit: str = "stretch"

    def __post_init__(self):
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"image_size must be [height, width] >= 1, got {list(size)}")
        for key, value, allowed in (("color", self.color, tuple(COLORS)),
                                    ("resize", self.resize, RESIZE_METHODS),
                                    ("fit", self.fit, FITS)):
            if value not in allowed:
                raise DataError(f"image {key} {value!r} is not one of {', '.join(allowed)}")

    @property
    def channels(self) -> int:
        return COLORS[self.color]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """The preprocessing an app must apply, for the contract."""
        return {"kind": "image", "image_size": list(self.image_size), "layout": "NHWC",
                "color": self.color, "channel_order": "RGB" if self.channels == 3 else "L",
                "decode": "first frame, 8-bit, alpha dropped",
                "resize": self.resize, "half_pixel_centers": True, "antialias": False,
                "fit": self.fit, "rounding": "round half to even, clip to [0, 255]",
                "value_range": [0, 255]}


@dataclass
class ImageFiles:
    """Image files and their labels: what an image dataset entry returns.

    Args:
        paths: absolute file paths (usable images only).
        y: class ids, int32.
        label_names: class names, index = class id (sorted folder names).
        spec: the decode/resize settings.
        splits: optional given split `{"train": idx, "val": idx, "test": idx}`.
        skipped: `[{"path", "reason"}]` of files that are not usable images.
        root: where the files are (for reports).
    """

    paths: list[str]
    y: np.ndarray
    label_names: list[str]
    spec: ImageSpec
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    root: str = ""
    task: str = "classification"
    info: dict[str, Any] = field(default_factory=dict)

    def make_splits(self, val_fraction: float, test_fraction: float, seed: int,
                    normalize, cache_dir: str | None = None, normalize_samples: int = 512):
        """`DataSplits` of `ImageSplit`s: the given split, else a seeded stratified one;
        normalization statistics from up to `normalize_samples` training images."""
        from kdl.data.core import DataSplits, Normalizer, fingerprint, fit_normalizer

        tr, va, te = stratified_split(self.y, val_fraction, test_fraction, seed, self.splits)
        norm = Normalizer.identity(np.zeros((1, self.spec.channels), "float32"))
        if normalize:
            pick = np.random.default_rng(seed).permutation(tr)[:normalize_samples]
            norm = fit_normalizer(normalize, decode_numpy([self.paths[i] for i in pick],
                                                          self.spec))

        def split(name, idx):
            cache = None if cache_dir is None else str(Path(cache_dir) / f"images-{name}")
            return ImageSplit([self.paths[i] for i in idx], self.y[idx], self.spec, norm, cache)

        stats = np.asarray([f"{p}:{os.path.getsize(p)}:{os.path.getmtime(p)}"
                            for p in self.paths])
        return DataSplits(
            train=split("train", tr), val=split("val", va), test=split("test", te),
            task=self.task, label_names=list(self.label_names), normalizer=norm,
            fingerprint=fingerprint(stats, self.y, tr, va, te),
            info={**self.info, "preprocessing": self.spec.to_dict()},
            files_report=self.report())

    def report(self) -> dict[str, Any]:
        """`data_report.json`: what was read, what was skipped and why."""
        counts = np.bincount(self.y, minlength=len(self.label_names))
        return {"root": self.root, "images": len(self.paths), "skipped": len(self.skipped),
                "skipped_files": self.skipped, "label_names": self.label_names,
                "images_per_class": dict(zip(self.label_names, counts.tolist(), strict=True)),
                "preprocessing": self.spec.to_dict()}


# ----------------------------------------------------------------------------- decoding


def decode_image(path, spec: ImageSpec):
    """`tf` ops: file path -> `(h, w, channels)` float32 pixels in [0, 255] at the spec's
    size, rounded as uint8 (see `ImageSpec`)."""
    return fit_and_resize(decode_file(path, spec.channels), spec)


GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as Pillow's convert("L")


def decode_file(path, channels: int):
    """`tf` ops: file path -> uint8 `(h, w, channels)`: JPEG/PNG/BMP/GIF (first frame)
    through `decode_image`, WebP (recognised by its header) through `decode_webp`, as
    RGB; grayscale is `floor(0.299 R + 0.587 G + 0.114 B + 0.5)` of that."""
    import tensorflow as tf

    data = tf.io.read_file(path)

    def webp():
        return tf.io.decode_webp(data)[0, ..., :3]  # (frames, h, w, c): the first frame

    def other():
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    header = tf.strings.substr(tf.strings.join([data, " " * 12]), 8, 4)  # padded: short files
    img = tf.cond(header == "WEBP", webp, other)
    if channels == 1:
        luma = tf.tensordot(tf.cast(img, "float32"), tf.constant(GRAY_WEIGHTS), [[2], [0]])
        img = tf.cast(tf.floor(luma + 0.5), "uint8")[..., None]
    img.set_shape([None, None, channels])
    return img


def fit_and_resize(img, spec: ImageSpec):
    import tensorflow as tf

    th, tw = spec.image_size
    x = tf.cast(img, "float32")

    if spec.fit == "crop":
        top, left, ch, cw = (tf.unstack(_tf_crop_box(tf.shape(img), th, tw)))
        x = x[top:top + ch, left:left + cw]
        x = tf.image.resize(x, (th, tw), spec.resize)
    elif spec.fit == "pad":
        top, left, nh, nw = tf.unstack(_tf_pad_box(tf.shape(img), th, tw))
        x = tf.image.resize(x, tf.stack([nh, nw]), spec.resize)
        x = tf.pad(x, [[top, th - nh - top], [left, tw - nw - left], [0, 0]])
    else:
        x = tf.image.resize(x, (th, tw), spec.resize)
    x = tf.clip_by_value(tf.round(x), 0.0, 255.0)
    x.set_shape([th, tw, spec.channels])
    return x


def _tf_crop_box(shape, th: int, tw: int):
    """Keras's `crop_to_aspect_ratio` box `(top, left, height, width)`, centred:
    `ch = min(h, max(w * th // tw, 1))`, `cw = min(w, max(h * tw // th, 1))`."""
    import tensorflow as tf

    h, w = tf.cast(shape[0], "int64"), tf.cast(shape[1], "int64")
    ch = tf.minimum(h, tf.maximum((w * th) // tw, 1))
    cw = tf.minimum(w, tf.maximum((h * tw) // th, 1))
    return tf.cast(tf.stack([(h - ch) // 2, (w - cw) // 2, ch, cw]), "int32")


def _tf_pad_box(shape, th: int, tw: int):
    """Where the image goes inside `(th, tw)` keeping its aspect ratio, centred:
    `(top, left, height, width)` with `scale = min(th / h, tw / w)` (float64),
    `height = clip(round_half_even(h * scale), 1, th)` (width alike)."""
    import tensorflow as tf

    h, w = tf.cast(shape[0], "float64"), tf.cast(shape[1], "float64")
    scale = tf.minimum(th / h, tw / w)
    nh = tf.clip_by_value(tf.round(h * scale), 1.0, float(th))
    nw = tf.clip_by_value(tf.round(w * scale), 1.0, float(tw))
    nh, nw = tf.cast(nh, "int32"), tf.cast(nw, "int32")
    return tf.stack([(th - nh) // 2, (tw - nw) // 2, nh, nw])


def decode_numpy(paths: list[str], spec: ImageSpec) -> np.ndarray:
    """Decode and resize `paths` (all usable) into one float32 array `(n, h, w, c)`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    ds = ds.map(lambda p: decode_image(p, spec), num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate([*ds.batch(256).prefetch(2).as_numpy_iterator(),
                           np.zeros((0, *spec.input_shape), "float32")])


def raw_pixels(path: str, spec: ImageSpec) -> np.ndarray:
    """One file decoded as the training pipeline decodes it, before resizing: uint8
    `(h, w, channels)` (what an app holds after decoding; golden vectors start here)."""
    return np.asarray(decode_file(path, spec.channels)).astype("uint8")


def scan_decodable(paths: list[str], channels: int) -> tuple[list[int], list[dict[str, str]]]:
    """Decode every file once with the pipeline's decoder, in parallel.

    Returns:
        The indices of the usable files, and `[{"path", "reason"}]` for the others
        (zero bytes, not an image, corrupt or truncated).
    """
    import tensorflow as tf

    if not paths:
        return [], []
    key = (tuple(paths), channels, tuple(os.stat(p).st_mtime_ns for p in paths))
    if key in _SCANS:  # config validation scanned these files already
        ok, bad = _SCANS[key]
        return list(ok), [dict(b) for b in bad]
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str),
                                             np.arange(len(paths), dtype="int64")))
    ds = ds.map(lambda p, i: (tf.shape(decode_file(p, channels)), i),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=False)
    ok = sorted(int(i) for _, i in ds.as_numpy_iterator())
    good = set(ok)
    bad = [{"path": p, "reason": _why_unusable(p, channels)}
           for i, p in enumerate(paths) if i not in good]
    _SCANS.clear()  # keep one scan: the one load_splits will ask for next
    _SCANS[key] = (list(ok), [dict(b) for b in bad])
    return ok, bad


_SCANS: dict[tuple, tuple[list[int], list[dict[str, str]]]] = {}


def _why_unusable(path: str, channels: int) -> str:
    if os.path.getsize(path) == 0:
        return "zero bytes"
    try:
        decode_file(path, channels)
    except Exception as e:  # noqa: BLE001  (the decoder's own message is the reason)
        msg = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", str(getattr(e, "message", e))).strip()
        return "cannot be decoded as " + "/".join(IMAGE_FORMATS) + (
            f": {msg.splitlines()[0][:160]}" if msg else "")
    return "cannot be decoded"


# ----------------------------------------------------------------------------- sources


def _image_files(folder: Path) -> list[Path]:
    """Every visible regular file under `folder` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".")
                                             for part in p.relative_to(folder).parts))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _folder_dir(path: str | None) -> Path:
    if not path:
        raise DataError("image_folder needs data.path=<folder with one subfolder per class>")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r} is not a folder; image_folder takes a folder "
                        "with one subfolder per class (or train/ val/ test/ subfolders)")
    return root


SPLIT_DIRS = ("train", "val", "test")


def image_folder_files(path: str | None, spec: ImageSpec) -> ImageFiles:
    """Scan `path`: class subfolders, or `train/ val/ test/` subfolders of class folders.

    Raises:
        DataError: an empty folder, a single class, or a class without a usable image
            (named), before any decoding beyond the one check per file.
    """
    root = _folder_dir(path)
    subdirs = _class_dirs(root)
    names = {p.name for p in subdirs}
    split_layout = "train" in names and names <= set(SPLIT_DIRS)
    if split_layout:
        groups = {s: _class_dirs(root / s) for s in SPLIT_DIRS if s in names}
        classes = sorted({d.name for ds in groups.values() for d in ds})
        missing = sorted({c for c in classes} - {d.name for d in groups["train"]})
        if missing:
            raise DataError(f"{root}/train has no folder for class(es) {missing} found in "
                            "val/ or test/: every class needs training images")
    else:
        groups = {"all": subdirs}
        classes = [d.name for d in subdirs]
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not classes:
        raise DataError(f"{root} has no class subfolders"
                        f"{f' (only files: {loose[:3]})' if loose else ' (it is empty)'}; "
                        "put each class's images in their own subfolder: "
                        f"{root}/<class name>/*.jpg")
    if len(classes) < 2:
        raise DataError(f"{root} has a single class ({classes[0]!r}); a classifier needs at "
                        "least two class subfolders")
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, part = [], [], []
    for group, dirs in groups.items():
        for d in dirs:
            for f in _image_files(d):
                paths.append(str(f.resolve()))
                labels.append(index[d.name])
                part.append(group)
    return _checked(paths, labels, part, classes, spec, str(root))


def image_csv_files(path: str | None, spec: ImageSpec) -> ImageFiles:
    """A CSV with a header `path,label` (optionally `split`: train/val/test); paths
    relative to the CSV's folder; label names sorted."""
    if not path:
        raise DataError("image_csv needs data.path=<file.csv> with columns path,label")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path {str(p)!r} does not exist or is not a file")
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0]) if rows else []
    if not rows or not {"path", "label"} <= set(header):
        raise DataError(f"{p} must have a header with columns path,label (and optionally "
                        f"split) and at least one row; found {header or 'no rows'}")
    classes = sorted({r["label"] for r in rows})
    if len(classes) < 2:
        raise DataError(f"{p} has a single label ({classes[0]!r}); a classifier needs at least "
                        "two")
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, part, missing = [], [], [], []
    for r in rows:
        f = (p.parent / r["path"]).resolve()
        if not f.is_file():
            missing.append(r["path"])
            continue
        paths.append(str(f))
        labels.append(index[r["label"]])
        split = (r.get("split") or "all").strip() or "all"
        if split not in (*SPLIT_DIRS, "all"):
            raise DataError(f"{p}: split {split!r} (row of {r['path']!r}) is not one of "
                            f"train, val, test")
        part.append(split)
    files = _checked(paths, labels, part, classes, spec, str(p))
    files.skipped += [{"path": str(p.parent / m), "reason": "no such file"} for m in missing]
    return files


def _checked(paths, labels, part, classes, spec: ImageSpec, root: str) -> ImageFiles:
    """Decode-check every file; fail on a class left without a usable image."""
    ok, skipped = scan_decodable(paths, spec.channels)
    paths = [paths[i] for i in ok]
    y = np.asarray([labels[i] for i in ok], "int32")
    part = [part[i] for i in ok]
    counts = np.bincount(y, minlength=len(classes)) if len(y) else np.zeros(len(classes), int)
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"class(es) {empty} in {root} have no usable image "
                        f"({len(skipped)} file(s) skipped as not decodable, e.g. "
                        f"{skipped[0]['path'] if skipped else 'none'}); add images or remove "
                        "the folder")
    splits = {}
    if any(g != "all" for g in part):
        arr = np.asarray(part)
        splits = {s: np.flatnonzero(arr == s) for s in SPLIT_DIRS if (arr == s).any()}
    return ImageFiles(paths, y, list(classes), spec, splits, skipped, root)


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     given: dict[str, np.ndarray]):
    """Seeded per-class split; given `val`/`test` parts are kept, missing ones are drawn
    from the rest (a given `train` part included); train is what remains."""
    rng = np.random.default_rng(seed)
    held = [given[k] for k in ("val", "test") if k in given]
    pool = np.setdiff1d(np.arange(len(y)), np.concatenate(held) if held else [])
    out = {"train": [], "val": [], "test": []}
    for c in np.unique(y[pool]):
        idx = rng.permutation(pool[y[pool] == c])
        n_test = 0 if "test" in given else int(round(test_fraction * len(idx)))
        n_val = 0 if "val" in given else int(round(val_fraction * len(idx)))
        out["test"].append(idx[:n_test])
        out["val"].append(idx[n_test:n_test + n_val])
        out["train"].append(idx[n_test + n_val:])
    parts = {k: np.sort(np.concatenate(v)).astype("int64") if v else np.array([], "int64")
             for k, v in out.items()}
    parts.update({k: np.asarray(given[k], "int64") for k in ("val", "test") if k in given})
    if not len(parts["train"]):
        raise DataError(f"{len(y)} images: too few for val_fraction={val_fraction} and "
                        f"test_fraction={test_fraction}; add images or lower the fractions")
    return parts["train"], parts["val"], parts["test"]


# ----------------------------------------------------------------------------- splits


class ImageSplit:
    """One split of image files, streamed (`dataset`) or decoded on demand (`x`).

    Args:
        paths: the files.
        y: class ids.
        spec: decode/resize settings.
        normalizer: applied after augmentation (None: pixels as decoded, [0, 255]).
        cache: a file prefix for `tf.data`'s file cache of decoded, resized images
            (None: decode every epoch).
    """

    def __init__(self, paths: list[str], y: np.ndarray, spec: ImageSpec, normalizer=None,
                 cache: str | None = None):
        self.paths, self.y, self.spec = list(paths), np.asarray(y, "int32"), spec
        self.normalizer, self.cache = normalizer, cache
        self._x = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def x(self) -> np.ndarray:
        """Every image decoded and normalized, `(n, h, w, c)` float32 (kept once made:
        for the small evaluation splits and calibration samples)."""
        if self._x is None:
            x = decode_numpy(self.paths, self.spec)
            self._x = self.normalizer(x) if self.normalizer is not None else x
        return self._x

    def subset(self, idx) -> ImageSplit:
        idx = np.asarray(idx, "int64")
        return ImageSplit([self.paths[i] for i in idx], self.y[idx], self.spec, self.normalizer)

    def head(self, n: int):
        """The first `n` images decoded, as an in-memory `Split`."""
        from kdl.data.core import Split

        part = self.subset(np.arange(min(n, len(self))))
        return Split(part.x, part.y)

    def dataset(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                targets: bool = True, drop_remainder: bool = False, augment=None):
        """`tf.data` of batches: decode (parallel) -> cache -> shuffle -> batch ->
        `augment(x, y)` -> normalize -> prefetch. The file list is shuffled before
        decoding (no image buffer) unless a file cache holds the decoded images."""
        import tensorflow as tf

        spec = self.spec
        paths = np.asarray(self.paths, dtype=str)
        ds = tf.data.Dataset.from_tensor_slices((paths, self.y))
        if shuffle and not self.cache:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (decode_image(p, spec), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.cache:
            Path(self.cache).parent.mkdir(parents=True, exist_ok=True)
            ds = ds.cache(self.cache)
            if shuffle:
                ds = ds.shuffle(min(len(paths), 2048), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if augment is not None:
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.normalizer is not None and np.any(self.normalizer.std != 1) | np.any(
                self.normalizer.mean != 0):
            mean = tf.constant(self.normalizer.mean)
            std = tf.constant(self.normalizer.std)
            ds = ds.map(lambda x, y: ((x - mean) / std, y))
        if not targets:
            ds = ds.map(lambda x, y: x)
        return ds.prefetch(tf.data.AUTOTUNE)
