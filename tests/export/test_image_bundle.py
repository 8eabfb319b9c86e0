"""Image contract: the NumPy port of the pipeline's resize, uint8-input int8, the bundle's
image block and golden images, and `predict` (numpy + LiteRT + Pillow)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kdl.data.images import ImageSpec, decode_image, raw_pixels
from pipelines import predict as predict_mod
from pipelines.verify_bundle import preprocess_image, verify_bundle


@pytest.mark.once
@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_numpy_port_gives_the_pipelines_pixels(tmp_path, fit, method):
    rng = np.random.default_rng(0)
    spec = ImageSpec((12, 20), "rgb", method, fit)
    diffs = []
    for i, size in enumerate([(7, 9), (40, 25), (12, 20), (31, 64), (3, 50)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype="uint8")).save(path)
        want = np.asarray(decode_image(str(path), spec))
        got = preprocess_image(raw_pixels(str(path), spec), spec.to_dict())
        assert got.shape == want.shape == (12, 20, 3)
        diffs.append(np.abs(got - want))
    d = np.concatenate([x.ravel() for x in diffs])
    assert d.max() <= 1 and (d == 0).mean() > 0.99, (d.max(), (d == 0).mean())


@pytest.mark.once
def test_numpy_port_grayscale_matches(tmp_path):
    spec = ImageSpec((9, 9), "grayscale")
    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), "uint8")).save(path)
    rgb = np.asarray(Image.open(path).convert("RGB"))  # what predict decodes
    want = np.asarray(decode_image(str(path), spec))
    got = preprocess_image(rgb, spec.to_dict())
    assert got.shape == want.shape == (9, 9, 1)
    assert np.abs(got - want).max() <= 2  # Pillow's and TF's JPEG decoders may differ by 1


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory):
    """A tiny raw-pixel CNN exported to uint8-input int8 and bundled with golden images."""
    import keras

    from kdl.export import export
    from kdl.export.bundle import write_bundle

    tmp = tmp_path_factory.mktemp("bundle")
    rng = np.random.default_rng(0)
    spec = ImageSpec((16, 16))
    files, x, y = [], [], []
    for i in range(24):
        c = i % 2
        img = np.clip(rng.normal(70 + 110 * c, 25, (20 + i, 18, 3)), 0, 255).astype("uint8")
        Image.fromarray(img).save(tmp / f"{i}.png")
        files.append(tmp / f"{i}.png")
        x.append(np.asarray(decode_image(str(files[-1]), spec)))
        y.append(c)
    x, y = np.stack(x), np.array(y)
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=40, batch_size=8, verbose=0)
    paths = export(model, tmp / "export", ["tflite_int8"],
                   {"tflite_int8": {"representative": x[:16], "input_dtype": "uint8"}})
    bundle = write_bundle(
        tmp / "bundle", {"tflite_int8": paths["tflite_int8"]}, x[:4], label_names=["dark",
                                                                                 "light"],
        image={**spec.to_dict(), "model_input": "[0, 255]; Rescaling inside the model"},
        golden_images=[raw_pixels(str(f), spec) for f in files[:4]],
        reference_outputs=model.predict(x[:4], verbose=0))
    return bundle, files, y


@pytest.mark.tf_only
def test_uint8_input_is_raw_pixels_and_the_bundle_verifies(image_bundle):
    bundle, _, _ = image_bundle
    contract = json.loads((bundle / "contract.json").read_text())
    (entry,) = contract["files"].values()
    assert entry["inputs"][0]["dtype"] == "uint8"
    assert entry["inputs"][0]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert contract["preprocessing"]["image"]["image_size"] == [16, 16]
    code, lines = verify_bundle(bundle)
    assert code == 0, lines
    assert any("PASS image preprocessing" in line for line in lines)


@pytest.mark.tf_only
def test_a_wrong_resize_in_the_contract_fails_the_image_check(image_bundle, tmp_path):
    import shutil

    bundle, _, _ = image_bundle
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    contract = json.loads((bad / "contract.json").read_text())
    contract["preprocessing"]["image"]["fit"] = "crop"  # golden images are not square
    (bad / "contract.json").write_text(json.dumps(contract))
    code, lines = verify_bundle(bad)
    assert code == 1 and any("FAIL image preprocessing" in line for line in lines)


@pytest.mark.tf_only
def test_predict_prints_the_right_labels_and_names_unreadable_files(image_bundle, tmp_path,
                                                                    capsys):
    bundle, files, y = image_bundle
    result = predict_mod.predict(bundle, [str(f) for f in files[4:]], top_k=2)
    got = [p["top"][0]["label"] for p in result["predictions"]]
    assert result["model"] == "model_int8.tflite" and len(got) == 20
    assert got == [["dark", "light"][c] for c in y[4:]]  # the photos' own classes
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    code = predict_mod.main([str(bundle), str(files[0]), str(tmp_path / "broken.jpg"),
                             str(tmp_path / "missing.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "broken.jpg" in err and "missing.png" in err and "cannot read 2 input(s)" in err


@pytest.mark.once
@pytest.mark.tf_only
def test_predict_command_imports_no_keras_or_tensorflow(image_bundle):
    bundle, files, _ = image_bundle
    code = (f"import sys; argv = ['predict', {str(bundle)!r}, {str(files[5])!r}, '--json'];"
            "from pipelines.cli import main; rc = main(argv);"
            "bad = [m for m in ('keras', 'tensorflow', 'kdl') if m in sys.modules];"
            "print('IMPORTED', bad); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout
    result = json.loads(out.stdout[:out.stdout.rindex("IMPORTED")])
    assert result["predictions"][0]["top"][0]["label"] in ("dark", "light")
