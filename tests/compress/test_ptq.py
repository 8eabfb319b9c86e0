"""Keras post-training quantization (`model.quantize`) and where it does not apply."""

import keras
import numpy as np
import pytest

from kdl.compress.ptq import keras_quantizable_layers, keras_quantize
from kdl.models import build_model


def test_keras_int8_quantizes_dense_layers_and_stays_close():
    keras.utils.set_random_seed(0)
    model = build_model("mlp", (16,), 4, preset="default")
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    before = model.predict(x, verbose=0)
    done = keras_quantize(model, "int8")
    assert done == keras_quantizable_layers(model) and len(done) == 3
    assert all(model.get_layer(n).quantization_mode == "int8" for n in done)
    after = model.predict(x, verbose=0)
    assert np.abs(after - before).max() < 0.05
    assert np.mean(after.argmax(1) == before.argmax(1)) >= 0.95


def test_keras_quantize_refuses_models_it_cannot_quantize():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(10, 8, name="conv")(inp)
    model = keras.Model(inp, keras.layers.Softmax()(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"no Dense, EinsumDense or Embedding.*Conv2D"):
        keras_quantize(model, "int8")
    with pytest.raises(ValueError, match="mode must be one of"):
        keras_quantize(build_model("mlp", (4,), 2, preset="tiny"), "int2")
