"""Native QAT: fake-quant numerics vs NumPy, training on every backend, int8 export parity."""

import keras
import numpy as np
import pytest

from kdl.compress import ConstantSparsity, MagnitudePruner
from kdl.compress.qat import (
    ActivationQuantizer,
    calibrate,
    fake_quant_activation,
    fake_quant_weights,
    quantize_aware,
    quantizers,
    strip_quantization,
)
from kdl.data import load_splits
from kdl.models import build_model


def np_fake_quant_weights(w):
    scale = np.abs(w).reshape(-1, w.shape[-1]).max(0) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def np_fake_quant_activation(x, lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0
    zp = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    q = np.clip(np.round(x / scale) + zp, -128, 127)
    return (q - zp) * scale


def test_fake_quant_weights_matches_numpy():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype("float32")
    w[..., 2] = 0.0  # an all-zero channel stays zero
    got = keras.ops.convert_to_numpy(fake_quant_weights(keras.ops.convert_to_tensor(w)))
    np.testing.assert_allclose(got, np_fake_quant_weights(w), atol=1e-6)
    assert np.all(got[..., 2] == 0)
    for c in (0, 1, 3, 4, 5):  # at most 255 levels, the largest weight exactly kept
        assert len(np.unique(got[..., c])) <= 255
        assert np.abs(got[..., c]).max() == pytest.approx(np.abs(w[..., c]).max())


def test_fake_quant_activation_matches_numpy():
    x = np.linspace(-3, 5, 1001).astype("float32")
    for lo, hi in [(-1.0, 2.0), (0.0, 3.7), (0.5, 2.0), (-4.0, -1.0)]:
        got = keras.ops.convert_to_numpy(fake_quant_activation(keras.ops.convert_to_tensor(x),
                                                               lo, hi))
        np.testing.assert_allclose(got, np_fake_quant_activation(x, lo, hi), atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits")


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    model = build_model("cnn", digits.input_shape, digits.num_outputs, preset="tiny")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(digits.train.x, digits.train.y, batch_size=64, epochs=4, verbose=0)
    pruner = MagnitudePruner(model, ConstantSparsity(0.5, 0, frequency=1000), exclude=["head"])
    pruner.update_masks(0.5)
    pruner.apply_masks()
    qat = quantize_aware(model)
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
    qat.fit(digits.train.x, digits.train.y, batch_size=64, epochs=2, verbose=0,
            callbacks=[MagnitudePruner.keep_zeros(qat, exclude=["head"]).callback()])
    return model, qat


def test_qat_model_structure_and_tracked_ranges(trained):
    _, qat = trained
    names = [q.name for q in quantizers(qat)]
    # TFLite's quantized tensors: input, fused conv+bn+relu outputs, dense, logits, softmax.
    assert names == ["conv_0_input_quant", "relu_0_quant", "relu_1_quant", "dense_quant",
                     "head_logits_quant", "head_quant"]
    for q in quantizers(qat):
        lo, hi = (float(keras.ops.convert_to_numpy(v)) for v in (q.min_val, q.max_val))
        if q.fixed_range is None:
            assert float(keras.ops.convert_to_numpy(q.seen)) > 0 and lo < hi, q.name
        else:
            assert (lo, hi) == (0.0, 255 / 256)


def test_pruned_zeros_survive_qat(trained):
    model, qat = trained
    for name in ("conv_0", "conv_1", "dense"):
        assert abs(np.mean(keras.ops.convert_to_numpy(qat.get_layer(name).kernel) == 0)
                   - 0.5) <= 0.01, name


def test_qat_model_saves_and_reloads(trained, digits, tmp_path):
    _, qat = trained
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    assert isinstance(loaded.get_layer("conv_0_input_quant"), ActivationQuantizer)
    np.testing.assert_allclose(loaded.predict(digits.test.x[:32], verbose=0),
                               qat.predict(digits.test.x[:32], verbose=0), atol=1e-6)


def test_stripped_kernels_lie_on_int8_grid(trained):
    model, qat = trained
    stripped = strip_quantization(qat, model)
    assert [type(la) for la in stripped.layers] == [type(la) for la in model.layers]
    for name in ("conv_0", "conv_1", "dense", "head"):
        w = keras.ops.convert_to_numpy(stripped.get_layer(name).kernel)
        scale = np.abs(w).reshape(-1, w.shape[-1]).max(0) / 127.0
        levels = w / scale
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


@pytest.mark.tf_only
def test_int8_tflite_agrees_with_fake_quant_model(trained, digits, tmp_path):
    """Full-int8 TFLite vs the calibrated fake-quant model: same scales, every output within a step.

    The fake-quant model folds batch norm into the conv and puts biases on
    TFLite's int32 grid, so its int8 tensors are those of the `.tflite`
    (`benchmarks/qat_parity.py` compares them tensor by tensor); one step is
    the margin the issue allows.
    """
    from kdl.compress.qat import activation_qparams
    from kdl.export import LiteRTRunner, export

    model, qat = trained
    rep = digits.train.x[:200]
    calibrate(qat, rep)
    stripped = strip_quantization(qat, model)
    path = export(stripped, tmp_path, ["tflite_int8"],
                  {"tflite_int8": {"representative": rep}})["tflite_int8"]
    runner = LiteRTRunner(path)
    in_scale, in_zp = runner.input["quantization"]
    q_in = qat.get_layer("conv_0_input_quant")
    scale, zp = activation_qparams(q_in.min_val, q_in.max_val)
    assert abs(float(scale) - in_scale) <= 1e-6 * in_scale and int(zp) == in_zp
    out_scale, _ = runner.output["quantization"]
    assert out_scale == 1 / 256
    y_tfl = runner.predict(digits.test.x)
    y_qat = np.asarray(qat.predict(digits.test.x, verbose=0))
    steps = np.round(np.abs(y_tfl - y_qat) / out_scale)
    assert steps.max() <= 1, np.unique(steps, return_counts=True)
    assert np.mean(y_tfl.argmax(1) == y_qat.argmax(1)) >= 0.99


def test_batch_norm_folds_into_conv_and_strips_back(trained, digits):
    """QAT folds each Conv+BN (statistics frozen); strip gives the BN its trained weights back."""
    model, qat = trained
    assert isinstance(qat.get_layer("bn_0"), keras.layers.Identity)
    conv = qat.get_layer("conv_0")
    assert conv.batch_norm["name"] == "bn_0"
    stripped = strip_quantization(qat, model)
    bn = stripped.get_layer("bn_0")
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(getattr(bn, name)),
                                      keras.ops.convert_to_numpy(getattr(conv, name)))
    # frozen statistics: QAT did not move them away from the float model's
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(conv.moving_mean),
                                  keras.ops.convert_to_numpy(model.get_layer("bn_0").moving_mean))
    x_q = keras.Model(qat.inputs, qat.get_layer("conv_0_input_quant").output[0]).predict(
        digits.test.x[:16], verbose=0)
    folded = keras.Model(qat.inputs, qat.get_layer("bn_0").output).predict(
        digits.test.x[:16], verbose=0)
    unfolded = keras.Model(stripped.inputs, stripped.get_layer("bn_0").output).predict(
        x_q, verbose=0)
    # same int8 kernel grid; they differ by the bias's int32 rounding and float order only
    np.testing.assert_allclose(folded, unfolded, atol=1e-3)


@pytest.mark.parametrize("name", ["transformer_classifier", "bag_of_embeddings"])
def test_token_ids_and_masks_are_not_fake_quantized(name):
    """TFLite keeps int32 ids (and boolean masks) as they are; a quantizer on them would
    round ids to other tokens (the reviews transformer's fake-quant model fell to 0.74
    while its int8 file kept 1.000)."""
    keras.utils.set_random_seed(0)
    model = build_model(name, (8,), 3, preset="tiny", vocab_size=40)
    qat = quantize_aware(model)
    assert quantizers(qat)  # the float activations still are
    for q in quantizers(qat):
        assert "float" in str(q.input.dtype), (q.name, q.input.dtype)
    ids = np.random.default_rng(0).integers(0, 40, size=(16, 8)).astype("int32")
    calibrate(qat, ids)
    want = keras.ops.convert_to_numpy(model(ids))
    got = keras.ops.convert_to_numpy(qat(ids))
    assert np.all(np.isfinite(got)) and np.abs(got - want).max() < 0.05


def test_a_sequential_model_goes_through_qat():
    """A `keras.Sequential` (not a Functional on Keras 3.15) is quantized through its
    functional view: the same quantizers and outputs as the same layers built Functional,
    it trains, and strips back to a Sequential. An unbuilt one and a subclassed model are
    refused with what to do."""
    keras.utils.set_random_seed(0)
    seq = keras.Sequential([keras.Input((4,)),
                            keras.layers.Dense(6, activation="relu", name="hidden"),
                            keras.layers.Dense(3, activation="softmax", name="head")], name="seq")
    inp = x = keras.Input((4,))
    for layer in seq.layers:  # the same layers, Functional, with the same weights
        x = layer.__class__.from_config(layer.get_config())(x)
    func = keras.Model(inp, x, name="func")
    func.set_weights(seq.get_weights())
    qs, qf = quantize_aware(seq), quantize_aware(func)
    assert [q.name for q in quantizers(qs)] == [q.name for q in quantizers(qf)] == [
        "hidden_input_quant", "hidden_quant", "head_logits_quant", "head_quant"]
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    calibrate(qs, x), calibrate(qf, x)
    np.testing.assert_allclose(qs.predict(x, verbose=0), qf.predict(x, verbose=0), atol=1e-6)
    qs.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = keras.ops.convert_to_numpy(qs.get_layer("hidden").kernel).copy()
    qs.fit(x, np.arange(32) % 3, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(before, keras.ops.convert_to_numpy(qs.get_layer("hidden").kernel))
    stripped = strip_quantization(qs, seq)
    assert isinstance(stripped, keras.Sequential)
    with pytest.raises(ValueError, match="'unbuilt' is not built; start it with keras.Input"):
        quantize_aware(keras.Sequential([keras.layers.Dense(2)], name="unbuilt"))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="is a subclassed Sub"):
        quantize_aware(Sub(name="sub"))
