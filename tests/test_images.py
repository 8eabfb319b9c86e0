"""Image files streamed from disk (kdl.data.images), augmentation, keras.datasets, shapes."""

import gzip
import struct

import keras
import numpy as np
import pytest
from PIL import Image

from kdl.data import DataError, load_splits, make_tf_dataset
from kdl.data.augment import Augment, check_augment
from kdl.data.images import ImageSpec, image_folder_files, raw_pixels


def _write(path, rng, size=(32, 32), fmt=None, colour=None):
    x = rng.integers(0, 256, (*size, 3), dtype="uint8") if colour is None else \
        np.full((*size, 3), colour, "uint8")
    Image.fromarray(x).save(path, format=fmt)


@pytest.fixture
def photos(tmp_path):
    """3 classes x 6 tiny images (PNG/JPEG, varied sizes) plus unusable files."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, name in enumerate(["cat", "ant", "bee"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            ext = "png" if i % 2 else "jpg"
            _write(root / name / f"{i}.{ext}", rng, size=(20 + 4 * i, 36), colour=60 * c + 20)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "ant" / "notes.txt").write_text("not an image")
    good = (root / "bee" / "1.png").read_bytes()
    (root / "bee" / "cut.png").write_bytes(good[: len(good) // 3])
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored, not counted
    return root


@pytest.mark.once
def test_folder_sorted_classes_skips_unusable_files_and_splits_stratified(photos):
    s = load_splits("image_folder", path=str(photos), image_size=(16, 16), normalize=False,
                    val_fraction=0.34, test_fraction=0.34, seed=3)
    assert s.label_names == ["ant", "bee", "cat"]
    rep = s.files_report
    assert rep["images"] == 18 and rep["skipped"] == 3
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in ((d["path"], d["reason"])
                                                   for d in rep["skipped_files"])}
    assert set(reasons) == {"empty.jpg", "notes.txt", "cut.png"}
    assert reasons["empty.jpg"] == "zero bytes" and "cannot be decoded" in reasons["notes.txt"]
    for split in (s.train, s.val, s.test):  # stratified: each class in each split
        assert sorted(np.bincount(split.y, minlength=3).tolist())[0] >= 1
    assert len(s.train) + len(s.val) + len(s.test) == 18
    assert s.input_shape == (16, 16, 3)
    assert s.train._x is None  # the shape comes from the spec: nothing decoded into memory
    assert s.test.x.shape == (len(s.test), 16, 16, 3)
    again = load_splits("image_folder", path=str(photos), image_size=(16, 16),
                        normalize=False, val_fraction=0.34, test_fraction=0.34, seed=3)
    assert again.test.paths == s.test.paths and again.fingerprint == s.fingerprint


@pytest.mark.once
def test_webp_gif_bmp_and_grayscale_decode(tmp_path):
    rng = np.random.default_rng(1)
    for fmt in ("webp", "gif", "bmp", "png"):
        _write(tmp_path / f"a.{fmt}", rng, size=(10, 14), colour=(200, 100, 50))
    spec = ImageSpec((10, 14), "grayscale")
    for fmt in ("webp", "gif", "bmp", "png"):
        px = raw_pixels(str(tmp_path / f"a.{fmt}"), spec)
        assert px.shape == (10, 14, 1) and px.dtype == np.uint8, fmt
        assert abs(int(px.mean()) - 124) <= 3, (fmt, px.mean())  # 0.299 R + 0.587 G + 0.114 B


@pytest.mark.once
@pytest.mark.parametrize("layout,match", [
    ("empty", "empty"), ("single", "single class"), ("corrupt", "no usable image"),
    ("file", "not a folder"),
])
def test_bad_folders_are_one_line_data_errors(tmp_path, layout, match):
    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(0)
    if layout == "single":
        (root / "only").mkdir()
        _write(root / "only" / "a.png", rng)
    if layout == "corrupt":
        for name in ("good", "bad"):
            (root / name).mkdir()
        _write(root / "good" / "a.png", rng)
        (root / "bad" / "a.png").write_bytes(b"\x89PNG broken")
    if layout == "file":
        root = tmp_path / "x.png"
        _write(root, rng)
    with pytest.raises(DataError, match=match) as e:
        image_folder_files(str(root), ImageSpec((8, 8)))
    assert "\n" not in str(e.value)


@pytest.mark.once
def test_train_val_test_folders_and_csv_are_used_as_given(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for name in ("a", "b"):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(n):
                _write(d / f"{i}.png", rng, size=(8, 8))
                rows.append(f"{split}/{name}/{i}.png,{name},{split}")
    s = load_splits("image_folder", path=str(tmp_path), image_size=(8, 8), normalize=False)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 4)
    assert all("/test/" in p for p in s.test.paths)
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    c = load_splits("image_csv", path=str(tmp_path / "list.csv"), image_size=(8, 8),
                    normalize=False)
    assert (len(c.train), len(c.val), len(c.test)) == (6, 2, 4)
    assert sorted(c.test.paths) == sorted(s.test.paths)
    only_train = tmp_path / "only"
    (tmp_path / "train").rename(only_train / "train" if only_train.mkdir() is None else None)
    o = load_splits("image_folder", path=str(only_train), image_size=(8, 8), normalize=False,
                    val_fraction=0.34, test_fraction=0.34)  # missing val/test: drawn
    assert (len(o.train), len(o.val), len(o.test)) == (2, 2, 2)


def test_streamed_split_trains_on_this_backend(photos, tmp_path):
    """The file pipeline (decode, resize, cache, shuffle, augment, normalize) feeds fit."""
    s = load_splits("image_folder", path=str(photos), image_size=(16, 16), normalize=True,
                    cache_dir=str(tmp_path / "cache"),
                    augment=[{"name": "RandomFlip", "mode": "horizontal"},
                             {"name": "RandomContrast", "factor": 0.2}])
    ds = make_tf_dataset(s.train, 4, shuffle=True, augment=s.augment)
    x, y = next(iter(ds.as_numpy_iterator()))
    assert x.shape == (4, 16, 16, 3) and np.isfinite(x).all() and abs(x.mean()) < 3
    from kdl.models import build_model

    model = build_model("cnn", s.input_shape, 3, preset="tiny")
    model.compile("adam", "sparse_categorical_crossentropy")
    hist = model.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
    assert list((tmp_path / "cache").glob("images-train*"))  # the file cache was written


@pytest.mark.once
def test_augment_unknown_names_and_arguments_name_close_matches():
    with pytest.raises(DataError, match="Did you mean 'RandomFlip'"):
        check_augment([{"name": "RandomFlp"}])
    with pytest.raises(DataError, match="no argument 'fator'.*'factor'"):
        check_augment([{"name": "RandomRotation", "fator": 0.1}])
    with pytest.raises(DataError, match="RandomRotation"):
        check_augment([{"name": "RandomRotation", "factor": "much"}])


def test_augment_is_seeded_and_mixing_makes_soft_labels():
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = np.arange(8) % 4
    specs = [{"name": "RandomRotation", "factor": 0.2}, {"name": "MixUp"}]

    def first(seed):
        aug = Augment(specs, 4, seed)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(aug)
        return next(iter(ds.as_numpy_iterator()))

    (a, ya), (b, yb), (c, _) = first(1), first(1), first(2)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert ya.shape == (8, 4) and np.allclose(ya.sum(1), 1) and (ya < 1).any()


@pytest.mark.once
def test_keras_dataset_from_its_cache_and_offline_error(tmp_path, monkeypatch):
    """fashion_mnist through Keras's own loader, from idx files written in its format."""
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # Keras 3.15: its cache root
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    d = tmp_path / "datasets" / "fashion-mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        labels = (np.arange(n) % 10).astype("uint8")
        images = rng.integers(0, 256, (n, 28, 28), dtype="uint8")
        with gzip.open(d / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
        with gzip.open(d / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    s = load_splits("fashion_mnist", normalize=False, val_fraction=0.2)
    assert s.input_shape == (28, 28, 1) and len(s.test) == 10 and len(s.train) == 22
    assert s.label_names[9] == "Ankle boot"
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    monkeypatch.setattr("urllib.request.urlretrieve", _offline)
    with pytest.raises(DataError, match=r"offline, place mnist.npz in .*datasets"):
        load_splits("mnist")


def _offline(*args, **kwargs):
    raise OSError("network is unreachable")


@pytest.mark.once
def test_shapes_writes_real_png_and_jpeg_class_folders(tmp_path):
    from kdl.data.shapes import write_shapes

    root = write_shapes(tmp_path, per_class=2, image_size=32, classes=3, seed=1)
    assert write_shapes(tmp_path, per_class=2, image_size=32, classes=3, seed=1) == root
    files = sorted(p.name for p in root.rglob("*.*") if p.suffix in (".png", ".jpg"))
    assert len(files) == 6 and {f.rsplit(".")[-1] for f in files} == {"png", "jpg"}
    s = load_splits("image_folder", path=str(root), image_size=(32, 32), normalize=False,
                    val_fraction=0.0, test_fraction=0.0)
    assert s.label_names == ["circle", "cross", "square"] and s.files_report["skipped"] == 0
    assert s.train.x.std() > 20  # textured, not flat


@pytest.mark.once
def test_mobile_backbone_prunes_and_refuses_native_qat():
    from kdl.compress.pruning import prunable_weights
    from kdl.compress.qat import quantize_aware
    from kdl.models import build_model

    model = build_model("mobilenet_v3_small", (32, 32, 3), 3, preset="tiny", bn_momentum=0.9)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and {la.get_config()["momentum"] for la in bns} == {0.9}
    with pytest.raises(ValueError, match="bn_momentum must be in"):
        build_model("mobilenet_v2", (32, 32, 3), 3, preset="tiny", bn_momentum=1.0)
    kinds = {type(la).__name__ for la, _ in prunable_weights(model)}
    assert {"DepthwiseConv2D", "Conv2D", "Dense"} <= kinds
    with pytest.raises(ValueError, match="depthwise/separable.*quantize.qat=false"):
        quantize_aware(model)
    x = np.full((1, 32, 32, 3), 255.0, "float32")
    assert np.isfinite(keras.ops.convert_to_numpy(model(x))).all()
