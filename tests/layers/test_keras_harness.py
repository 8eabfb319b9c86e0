"""Keras's own layer test harness (`keras.src.testing.TestCase.run_layer_test`) over every
registered kdl layer: serialization round trip, build, symbolic and eager calls, and a
`mixed_float16` call (output dtype = the layer's compute dtype, float32 weights). Runs on
every backend (torch CPU: Keras skips mixed precision there).

The harness's own training check (a jit-compiled `fit` per layer, ~5-15 s each on a
loaded CPU) is replaced by `test_one_training_step_moves_every_weight`: one eager step
through a functional model, which also asserts that every trainable weight moves.

`keras.src.testing` is private Keras API (checked on Keras 3.15); a change there fails
here loudly.
"""

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

import kdl.compress.qat  # noqa: F401  (registers the QAT layers)
import kdl.layers  # noqa: F401
import kdl.models  # noqa: F401  (registers the model-specific layers)

Q, KV = (2, 4, 8), (2, 3, 8)

# One case per layer: run_layer_test's keyword arguments. Layers called with several
# inputs take a dict of `<argument>_shape`s (Keras's convention).
CASES = {
    "ActivationQuantizer": dict(init_kwargs={}, input_shape=(2, 5),
                                expected_output_shape=(2, 5)),
    "BahdanauAttention": dict(init_kwargs={"units": 6},
                              input_shape={"query_shape": Q, "value_shape": KV},
                              expected_output_shape=((2, 4, 8), (2, 4, 3))),
    "ClassToken": dict(init_kwargs={}, input_shape=(2, 4, 8), expected_output_shape=(2, 5, 8)),
    "FirstToken": dict(init_kwargs={}, input_shape=(2, 4, 8), expected_output_shape=(2, 8)),
    "GraphConv": dict(init_kwargs={"units": 3, "activation": "relu"},
                      input_shape=((2, 5, 4), (2, 5, 5)), expected_output_shape=(2, 5, 3)),
    "LearnedPositionEmbedding": dict(init_kwargs={}, input_shape=(2, 4, 8),
                                     expected_output_shape=(2, 4, 8)),
    "MaskedMeanPooling": dict(init_kwargs={"pad_id": 0},
                              input_shape={"x_shape": (2, 4, 8), "tokens_shape": (2, 4)},
                              input_dtype={"x_shape": "float32", "tokens_shape": "int32"},
                              expected_output_shape=(2, 8)),
    "NormalizedAdjacency": dict(init_kwargs={}, input_shape=(2, 5, 5),
                                expected_output_shape=(2, 5, 5)),
    "PaddingMask": dict(init_kwargs={"pad_id": 0}, input_shape=(2, 6), input_dtype="int32",
                        expected_output_shape=(2, 6), expected_output_dtype="bool",
                        run_mixed_precision_check=False),
    "PatchEmbedding": dict(init_kwargs={"patch_size": 2, "model_dim": 8},
                           input_shape=(2, 4, 4, 3), expected_output_shape=(2, 4, 8)),
    "QuantConv1D": dict(init_kwargs={"filters": 3, "kernel_size": 2},
                        input_shape=(2, 6, 4), expected_output_shape=(2, 5, 3)),
    "QuantConv2D": dict(init_kwargs={"filters": 3, "kernel_size": 2,
                                     "batch_norm": {"epsilon": 1e-3}},
                        input_shape=(2, 5, 5, 4), expected_output_shape=(2, 4, 4, 3)),
    "QuantConv3D": dict(init_kwargs={"filters": 2, "kernel_size": 2},
                        input_shape=(2, 3, 3, 3, 1), expected_output_shape=(2, 2, 2, 2, 2)),
    "QuantDense": dict(init_kwargs={"units": 3}, input_shape=(2, 5),
                       expected_output_shape=(2, 3)),
    "SinusoidalPositionEncoding": dict(init_kwargs={"scale_input": True}, input_shape=(2, 4, 8),
                                       expected_output_shape=(2, 4, 8)),
    "TimestepEmbedding": dict(init_kwargs={"dim": 8}, input_shape=(2,), input_dtype="int32",
                              expected_output_shape=(2, 8)),
    "TransformerAttention": dict(init_kwargs={"num_heads": 2, "model_dim": 8, "dropout": 0.1},
                                 input_shape={"query_shape": Q, "value_shape": KV},
                                 expected_output_shape=(2, 4, 8)),
    "TransformerDecoderBlock": dict(
        init_kwargs={"num_heads": 2, "model_dim": 8, "mlp_dim": 16, "dropout": 0.1},
        input_shape={"x_shape": Q, "context_shape": KV}, expected_output_shape=Q),
    "TransformerEncoderBlock": dict(
        init_kwargs={"num_heads": 2, "model_dim": 8, "mlp_dim": 16, "dropout": 0.1},
        input_shape=Q, expected_output_shape=Q),
    "ZerosLike": dict(init_kwargs={}, input_shape=(2, 6), input_dtype="int32",
                      expected_output_shape=(2, 6), expected_output_dtype="int32",
                      run_mixed_precision_check=False),
}


def kdl_layers() -> dict[str, type]:
    """Registered kdl layers by name; old names kept for loading (aliases) left out."""
    objects = keras.saving.get_custom_objects()
    return {k.removeprefix("kdl>"): v for k, v in objects.items()
            if k.startswith("kdl>") and isinstance(v, type)
            and keras.saving.get_registered_name(v) == k
            and issubclass(v, keras.layers.Layer) and not issubclass(v, keras.Model)}


class _Harness(TestCase):
    def runTest(self):  # unittest needs one; the checks are called directly
        pass


@pytest.mark.once
def test_every_registered_layer_has_a_harness_case():
    assert sorted(kdl_layers()) == sorted(CASES), (
        "a registered kdl layer without a case here (or a case for a layer that is gone): "
        f"{sorted(set(kdl_layers()) ^ set(CASES))}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_layer_harness(name):
    _Harness().run_layer_test(kdl_layers()[name], **CASES[name], run_training_check=False)


TRAINABLE = sorted(set(CASES) - {"ActivationQuantizer", "FirstToken", "MaskedMeanPooling",
                                 "NormalizedAdjacency", "PaddingMask",
                                 "SinusoidalPositionEncoding", "TimestepEmbedding", "ZerosLike"})


@pytest.mark.parametrize("name", TRAINABLE)
def test_one_training_step_moves_every_weight(name):
    """One eager SGD step through a functional model changes every trainable weight."""
    case = CASES[name]
    shapes = case["input_shape"]
    shapes = list(shapes.values()) if isinstance(shapes, dict) else shapes
    several = isinstance(shapes[0], tuple)
    inputs = [keras.Input(s[1:]) for s in (shapes if several else [shapes])]
    layer = kdl_layers()[name](**case["init_kwargs"])
    if isinstance(case["input_shape"], dict):
        out = layer(*inputs)
    else:
        out = layer(inputs if several else inputs[0])
    out = out[0] if isinstance(out, tuple) else out
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.SGD(0.1), "mse", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=s).astype("float32") for s in (shapes if several else [shapes])]
    before = [keras.ops.convert_to_numpy(w).copy() for w in layer.trainable_weights]
    model.train_on_batch(x, rng.normal(size=(2, *out.shape[1:])).astype("float32"))
    moved = [not np.array_equal(b, keras.ops.convert_to_numpy(w))
             for b, w in zip(before, layer.trainable_weights, strict=True)]
    assert before and all(moved), [w.path for w, m in zip(layer.trainable_weights, moved,
                                                          strict=True) if not m]
