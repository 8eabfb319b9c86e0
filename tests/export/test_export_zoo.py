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
