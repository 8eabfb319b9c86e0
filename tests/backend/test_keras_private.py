"""Each private Keras API kdl uses (kdl/backend/keras_private.py), exercised on a small
model: a Keras upgrade that renames or changes one fails here, by name."""

import keras
import numpy as np
import pytest

from kdl.backend import keras_private as kp


def _model():
    inp = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, name="d1")(inp)
    out = keras.layers.Dense(2, name="d2")(keras.layers.BatchNormalization(name="bn")(h))
    return keras.Model(inp, out)


def test_checked_on_names_the_installed_keras_or_says_it_moved():
    """A Keras newer than the one checked: recheck the functions and bump CHECKED_ON."""
    major_minor = ".".join(keras.__version__.split(".")[:2])
    assert major_minor == kp.CHECKED_ON, (
        f"Keras {keras.__version__} installed, kdl/backend/keras_private.py was checked on "
        f"{kp.CHECKED_ON}: rerun tests/backend/test_keras_private.py and bump CHECKED_ON")


def test_graph_walk():
    model = _model()
    assert kp.is_functional(model)
    # Keras 3.15: a Sequential is not a Functional (QAT and tfmot take its functional view)
    assert not kp.is_functional(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))

    class Sub(keras.Model):
        def call(self, x):
            return x

    assert not kp.is_functional(Sub())
    assert kp.is_keras_layer_class(keras.layers.Dense)
    assert not kp.is_keras_layer_class(type("Mine", (keras.layers.Dense,), {}))
    nested = keras.Sequential([keras.Input((4,)), model])
    every = {la.name for la in kp.flatten_layers(nested, include_self=False)}
    assert {model.name, "d1", "bn", "d2"} <= every and nested.name not in every
    top = {la.name for la in kp.flatten_layers(nested, include_self=False, recursive=False)}
    assert model.name in top and "d1" not in top
    bn = model.get_layer("bn")
    (node,) = kp.inbound_nodes(bn)
    assert kp.source_operation(node.input_tensors[0]) is model.get_layer("d1")


def test_called_flag():
    model = _model()
    model(np.zeros((1, 4), "float32"))
    assert kp.has_been_called(model) is True


def test_optimizer_internals():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    opt = keras.optimizers.Adam(schedule, clipnorm=1.0)
    assert kp.learning_rate_schedule(opt) is schedule
    assert kp.learning_rate_schedule(object()) is None
    model = _model()
    opt.build(model.trainable_variables)
    assert list(kp.optimizer_trainable_variables(opt)) == list(model.trainable_variables)
    keys = {kp.variable_key(opt, v) for v in model.trainable_variables}
    assert len(keys) == len(model.trainable_variables)
    grads = [keras.ops.ones(v.shape) * 10 for v in model.trainable_variables]
    clipped = kp.clip_gradients(opt)(grads)
    assert float(keras.ops.convert_to_numpy(keras.ops.norm(clipped[0]))) <= 1.0 + 1e-5
    kp.set_clip_gradients(opt, lambda g: g)
    assert kp.clip_gradients(opt)(grads) is grads


@pytest.mark.tf_only  # kdl hooks it on TensorFlow only (the other trainers have none)
def test_symbolic_build_hook():
    model = _model()
    build = kp.symbolic_build(model)
    assert callable(build)
    seen = []
    kp.set_symbolic_build(model, lambda iterator=None, data_batch=None: seen.append(data_batch))
    model.compile("adam", "mse")
    model.fit(np.zeros((4, 4), "float32"), np.zeros((4, 2), "float32"), epochs=1, verbose=0)
    assert seen, "fit no longer calls _maybe_symbolic_build"


@pytest.mark.tf_only
def test_tensorflow_trainer_reduces_per_replica():
    assert callable(kp.tensorflow_trainer_module().reduce_per_replica)


@pytest.mark.tf_only  # the fused path patched is the TensorFlow backend's
@pytest.mark.parametrize("dropout", [0.0, 0.1])  # fused dot_product_attention / Softmax
def test_bounded_attention_mask_fill_is_used_and_restored(dropout):
    seen = []

    def fill(logits, mask):
        seen.append(tuple(mask.shape))
        return keras.ops.where(mask, logits, -30.0)

    mha = keras.layers.MultiHeadAttention(2, 4, dropout=dropout)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = np.ones((2, 5, 5), bool)
    mask[:, :, 3:] = False
    want = keras.ops.convert_to_numpy(mha(x, x, attention_mask=mask))
    call = keras.layers.Softmax.call
    with kp.bounded_attention_mask_fill(fill):
        got = keras.ops.convert_to_numpy(mha(x, x, attention_mask=mask))
    assert seen and seen[0][-2:] == (5, 5), "Keras's masked attention no longer calls the fill"
    assert keras.layers.Softmax.call is call
    np.testing.assert_allclose(got, want, atol=1e-6)
