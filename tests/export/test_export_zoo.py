"""What an app runs, exported to builtin-ops TFLite fp32 and checked against Keras:
recurrent (LSTM, GRU), causal TCN, Transformer, ViT, and the parts of generative
models an app calls (VAE/autoencoder decoder and encoder, GAN generator)."""

import keras
import numpy as np
import pytest

from kdl.export import export, load_runner
from kdl.models import build_model
from kdl.registry import MODELS

pytestmark = pytest.mark.tf_only  # conversion runs in a TensorFlow-backend process

SUPERVISED = [
    ("rnn", {"cell": "lstm"}, (6, 3)),
    ("rnn", {"cell": "gru"}, (6, 3)),
    ("tcn", {}, (6, 2)),
    ("transformer_classifier", {}, (6, 3)),
    ("vit", {}, (8, 8, 1)),
]


def _check_fp32(model, x, tmp_path):
    path = export(model, tmp_path, ["tflite_fp32"])["tflite_fp32"]
    got = load_runner("tflite_fp32", path)(x)
    want = np.asarray(model.predict(x, verbose=0))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name, params, shape", SUPERVISED,
                         ids=[f"{n}-{p.get('cell', '')}" for n, p, _ in SUPERVISED])
def test_sequence_and_attention_models_export_with_builtin_ops(name, params, shape, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(name, shape, 3, preset="tiny", **params)
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype("float32")
    _check_fp32(model, x, tmp_path)


@pytest.mark.parametrize("name, part", [("vae", "decoder"), ("vae", "encoder"),
                                         ("autoencoder", "decoder"), ("gan", "generator")])
def test_generative_models_export_the_part_an_app_runs(name, part, tmp_path):
    keras.utils.set_random_seed(0)
    entry = MODELS.get(name)
    model = MODELS.build(name, preset="tiny", **entry.meta["harness"]["kwargs"])
    sub = getattr(model, part)
    x = np.random.default_rng(0).normal(size=(4, *sub.inputs[0].shape[1:])).astype("float32")
    _check_fp32(sub, x, tmp_path)


@pytest.mark.parametrize("cell", [pytest.param("simple", marks=pytest.mark.slow),
                                  pytest.param("lstm", marks=pytest.mark.slow), "gru"])
def test_recurrent_models_convert_to_full_int8(cell, tmp_path):
    """The int8 calibrator crashes on a recurrent loop (SIGSEGV); kdl unrolls it over the
    fixed sequence length, and the int8 file follows the Keras model."""
    keras.utils.set_random_seed(0)
    model = build_model("rnn", (6, 3), 3, preset="tiny", cell=cell)
    rng = np.random.default_rng(0)
    rep = rng.normal(size=(32, 6, 3)).astype("float32")
    path = export(model, tmp_path, ["tflite_int8"],
                  {"tflite_int8": {"representative": rep}})["tflite_int8"]
    x = rng.normal(size=(8, 6, 3)).astype("float32")
    got = load_runner("tflite_int8", path)(x)
    want = np.asarray(model.predict(x, verbose=0))
    assert np.abs(got - want).max() < 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.tflite"]  # no work dirs


def test_a_converter_crash_is_an_export_error_with_its_last_words(tmp_path):
    """Without the unrolling, full-int8 calibration of a GRU kills the converter process:
    the export fails with the format, the signal and the calibrator's last frames."""
    from kdl.export.formats import ConverterCrash, _convert_tflite, _export_saved_model

    keras.utils.set_random_seed(0)
    model = build_model("rnn", (6, 3), 3, preset="tiny", cell="gru")
    _export_saved_model(model, tmp_path / "saved_model")
    rep = np.random.default_rng(0).normal(size=(8, 6, 3)).astype("float32")
    with pytest.raises(ConverterCrash, match=r"tflite_int8: the TFLite converter crashed while "
                                             r"converting and calibrating \(SIGSEGV\)") as e:
        _convert_tflite(tmp_path / "saved_model", tmp_path / "model_int8.tflite", "tflite_int8",
                        {"representative": rep}, model=model)
    assert e.value.details["signal"] == "SIGSEGV" and e.value.details["returncode"] == -11
    assert "calibrator.py" in e.value.details["last_words"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]  # no work dirs


def test_full_int8_of_a_recurrent_model_needs_a_fixed_length(tmp_path):
    from kdl.export.formats import ExportError

    model = build_model("rnn", (None, 3), 3, preset="tiny", cell="gru")
    rep = np.zeros((4, 6, 3), "float32")
    with pytest.raises(ExportError, match=r"needs a fixed sequence length.*tflite_dynamic"):
        export(model, tmp_path, ["tflite_int8"], {"tflite_int8": {"representative": rep}})
    assert list(tmp_path.iterdir()) == []
