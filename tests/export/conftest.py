"""A tiny classifier converted to TFLite (fp32 and full int8), shared by the export tests.

Conversion needs the TensorFlow backend: tests that use `tiny_export` are
marked `tf_only`.
"""

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from kdl.data import Normalizer

N_FEATURES, N_CLASSES = 8, 3


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((N_FEATURES,), name="features"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(N_CLASSES, activation="softmax"),
    ])


def raw_data(n: int = 64, seed: int = 0) -> np.ndarray:
    """Raw features far from zero mean / unit scale, so normalization matters."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, N_FEATURES)) * 3.0 + 10.0).astype("float32")


def convert(model, *, int8: bool = False, rep: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([r[None]] for r in rep)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """Keras model, normalizer, raw/normalized data, fp32 and int8 `.tflite` files."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tiny_export converts with TensorFlow; mark the test tf_only")
    d = tmp_path_factory.mktemp("tiny_export")
    model = tiny_model()
    raw = raw_data()
    norm = Normalizer.fit(raw)
    x = norm(raw)
    fp32 = d / "model_fp32.tflite"
    fp32.write_bytes(convert(model))
    int8 = d / "model_int8.tflite"
    int8.write_bytes(convert(model, int8=True, rep=x[:32]))
    keras_path = d / "model.keras"
    model.save(keras_path)
    saved_model = d / "saved_model"
    model.export(saved_model, format="tf_saved_model", verbose=False)
    return SimpleNamespace(model=model, normalizer=norm, raw=raw, x=x, dir=d, fp32=fp32,
                           int8=int8, keras_path=keras_path, saved_model=saved_model,
                           labels=[f"class_{i}" for i in range(N_CLASSES)])


@pytest.fixture(scope="session")
def good_bundle(tiny_export, tmp_path_factory):
    """A bundle of the tiny classifier's fp32 and int8 files that verifies (6 examples)."""
    from kdl.export.bundle import write_bundle

    t = tiny_export
    golden_raw = t.raw[:6]
    ref = t.model.predict(t.normalizer(golden_raw), verbose=0)
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    write_bundle(out, {"tflite_fp32": t.fp32, "tflite_int8": t.int8}, golden_raw,
                 normalization=t.normalizer, label_names=t.labels, task="classification",
                 model_name="tiny", model_version="7", source_run="run-123",
                 reference_outputs=ref)
    return out
