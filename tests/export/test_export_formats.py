"""kdl.export core: every format from one tiny model, parity, bad input."""

import keras
import numpy as np
import pytest

from kdl.data import load_splits
from kdl.export import FORMATS, ExportError, LiteRTRunner, compare, export, load_runner
from kdl.export.litert import ExportFileError
from kdl.models import build_model

pytestmark = pytest.mark.tf_only  # conversion runs in a TensorFlow-backend process


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny CNN trained briefly on digits (an untrained one has near-tied outputs)."""
    keras.utils.set_random_seed(0)
    splits = load_splits("digits", seed=0)
    model = build_model("cnn", (8, 8, 1), 10, preset="tiny")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(splits.train.x, splits.train.y, epochs=4, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("export")
    paths = export(model, out, list(FORMATS),
                   {"tflite_int8": {"representative": splits.train.x[:100]}})
    return model, splits.test.x, splits.test.y, paths


def test_every_format_is_written_and_matches_its_thresholds(exported):
    model, x, y, paths = exported
    assert set(paths) == set(FORMATS)
    reference = np.asarray(model.predict(x, verbose=0))
    for fmt, path in paths.items():
        assert path.exists(), fmt
        report = compare(reference, load_runner(fmt, path)(x), y, "classification",
                         FORMATS[fmt].thresholds)
        assert report["passed"], (fmt, report)
    fp32 = compare(reference, load_runner("tflite_fp32", paths["tflite_fp32"])(x), y,
                   "classification", {})
    assert fp32["max_abs_diff"] < 1e-5 and fp32["top1_agreement"] == 1.0


def test_int8_file_has_int8_input_and_output(exported):
    _, _, _, paths = exported
    runner = LiteRTRunner(paths["tflite_int8"])
    assert runner.input["dtype"] == np.int8 and runner.output["dtype"] == np.int8
    scale, _ = runner.input["quantization"]
    assert scale > 0
    assert paths["tflite_int8"].stat().st_size < paths["tflite_fp32"].stat().st_size


def test_parity_reports_a_miss_by_how_much():
    ref = np.array([[0.9, 0.1], [0.2, 0.8]], "float32")
    off = ref + np.array([[0.0, 0.0], [0.5, -0.5]], "float32")
    r = compare(ref, off, np.array([0, 1]), "classification",
                {"max_abs_diff": 1e-4, "min_top1_agreement": 1.0})
    assert not r["passed"]
    assert r["max_abs_diff"] == pytest.approx(0.5)
    assert r["top1_agreement"] == 0.5
    assert any("max abs diff 0.5" in f for f in r["failures"])


def test_corrupt_and_truncated_tflite_are_refused(exported, tmp_path):
    _, _, _, paths = exported
    data = paths["tflite_fp32"].read_bytes()
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ExportFileError, match="garbage.tflite: not a TFLite flatbuffer"):
        LiteRTRunner(bad)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportFileError, match="cut.tflite"):
        LiteRTRunner(cut)


def test_bad_options_formats_and_calibration_data(exported, tmp_path):
    model, x, _, _ = exported
    with pytest.raises(ExportError, match="format 'tflite_fp32' takes no option 'representative'"):
        export(model, tmp_path, ["tflite_fp32"], {"tflite_fp32": {"representative": x}})
    with pytest.raises(ExportError, match="unknown format 'tflite_int4'"):
        export(model, tmp_path, ["tflite_int4"])
    with pytest.raises(ExportError, match=r"shape \(4, 4, 1\).*\(8, 8, 1\)"):
        export(model, tmp_path, ["tflite_int8"],
               {"tflite_int8": {"representative": np.zeros((3, 4, 4, 1), "float32")}})


def test_mixed_precision_model_exports_through_its_float32_twin(tmp_path):
    from kdl.export import float32_model

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_model("cnn", (8, 8, 1), 10, preset="tiny")
    finally:
        keras.config.set_dtype_policy("float32")
    twin = float32_model(mixed)
    assert mixed.get_layer("conv_0").compute_dtype == "bfloat16"
    assert {layer.compute_dtype for layer in twin.layers} == {"float32"}
    for a, b in zip(mixed.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(twin.predict(x, verbose=0), mixed.predict(x, verbose=0),
                               atol=5e-2)
    paths = export(mixed, tmp_path, ["tflite_fp32"])
    tflite = load_runner("tflite_fp32", paths["tflite_fp32"])(x)
    np.testing.assert_allclose(tflite, twin.predict(x, verbose=0), atol=1e-5)


@pytest.mark.once
def test_every_format_row_names_its_exporter_and_runtime():
    """The format table is the only table: a row without an exporter or with a runtime the
    runtime table lacks would fail at export or bench time, here it fails at once."""
    from kdl.export.formats import RUNTIMES

    for f in FORMATS.values():
        assert callable(f.exporter), f"{f.name} names no exporter"
        assert f.runtime in RUNTIMES, f"{f.name}: runtime {f.runtime!r} not in RUNTIMES"
    for r in RUNTIMES.values():
        assert callable(r.runner) and (r.bench is None or callable(r.bench)), r.name
    assert [f.name for f in FORMATS.values() if f.is_tflite] == [
        "tflite_fp32", "tflite_dynamic", "tflite_fp16", "tflite_int8"]
