"""Engine tfmot: bad models refused before any work; prune and QAT end to end (TF pass)."""

import keras
import numpy as np
import pytest

from kdl.compress import ConstantSparsity, PolynomialDecay
from kdl.compress.tfmot_engine import TfmotEngineError, model_spec, tfmot_prune, tfmot_quantize


@keras.saving.register_keras_serializable(package="kdl_test")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def chain_model(custom=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = keras.layers.ReLU(name="relu")(x)
    if custom:
        x = Doubler(name="doubler")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense")(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="head")(x))


def test_custom_layer_is_named_before_any_work():
    with pytest.raises(TfmotEngineError, match=r"cannot take layer 'doubler' \(.*Doubler\)"):
        model_spec(chain_model(custom=True))


def test_branching_model_is_refused():
    inp = keras.Input((4,))
    a, b = keras.layers.Dense(3, name="a")(inp), keras.layers.Dense(3, name="b")(inp)
    model = keras.Model(inp, keras.layers.Add(name="add")([a, b]))
    with pytest.raises(TfmotEngineError, match="plain chain"):
        model_spec(model)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(256, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 256)


@pytest.mark.tf_only
@pytest.mark.once
def test_tfmot_prune_end_to_end(data):
    """tfmot (tf_keras process) prunes; the weights come back into the Keras 3 model."""
    model = chain_model()
    pruned = tfmot_prune(model, PolynomialDecay(0.0, 0.75, 0, 8, frequency=2), *data,
                         epochs=2, batch_size=32)
    for name in ("conv", "dense", "head"):
        w = keras.ops.convert_to_numpy(pruned.get_layer(name).kernel)
        assert abs(np.mean(w == 0) - 0.75) <= 0.01, name
    assert np.mean(keras.ops.convert_to_numpy(model.get_layer("dense").kernel) == 0) == 0
    with pytest.raises(ValueError, match="target_sparsity must be"):
        tfmot_prune(model, ConstantSparsity(1.5), *data, epochs=1)


@pytest.mark.slow  # a second tf_keras process (~25 s)
@pytest.mark.tf_only
@pytest.mark.once
def test_tfmot_qat_end_to_end(data, tmp_path):
    from kdl.export import LiteRTRunner

    model = chain_model()
    path = tfmot_quantize(model, *data, representative=data[0][:64],
                          out_path=tmp_path / "qat.tflite", epochs=1)
    runner = LiteRTRunner(path)
    assert runner.input["dtype"] == np.int8 and runner.output["dtype"] == np.int8
    y = runner.predict(data[0][:32])
    assert y.shape == (32, 10) and np.allclose(y.sum(1), 1.0, atol=0.05)
    with pytest.raises(TfmotEngineError, match=r"shape \(4,\)"):
        tfmot_quantize(model, *data, representative=np.zeros((4, 4), "float32"),
                       out_path=tmp_path / "x.tflite", epochs=1)


def _tflite_kernels(path, shapes):
    """The int8 constant tensors of a `.tflite` whose shapes are in `shapes`, by shape."""
    from kdl.export import LiteRTRunner

    interp = LiteRTRunner(path).interpreter
    return {tuple(d["shape"]): interp.get_tensor(d["index"])
            for d in interp.get_tensor_details()
            if d["dtype"] == np.int8 and tuple(d["shape"]) in shapes}


@pytest.mark.slow  # two tf_keras QAT processes (~40-65 s)
@pytest.mark.tf_only
@pytest.mark.once
def test_tfmot_prune_preserving_qat_keeps_the_zeros(data, tmp_path):
    """A 75%-pruned model through tfmot QAT: every pruned weight is 0 in the int8 file,
    with prune-preserving QAT; plain QAT (same data, a high learning rate) moves them."""
    model = chain_model()
    masks = {}
    for name in ("conv", "dense", "head"):  # magnitude pruning to 75% per kernel
        layer = model.get_layer(name)
        w, b = layer.get_weights()
        keep = np.abs(w) > np.quantile(np.abs(w), 0.75)
        layer.set_weights([w * keep, b])
        masks[name] = ~keep
    # TFLite layouts: Conv2D kernel (out, h, w, in), FullyConnected (out, in).
    pruned = {(8, 3, 3, 1): np.transpose(masks["conv"], (3, 0, 1, 2)),
              (32, 512): masks["dense"].T, (10, 32): masks["head"].T}
    zeros_moved = {}
    for preserve in (True, False):
        path = tfmot_quantize(model, *data, representative=data[0][:64],
                              out_path=tmp_path / f"qat_{preserve}.tflite", epochs=1,
                              learning_rate=1e-2, preserve_sparsity=preserve)
        kernels = _tflite_kernels(path, set(pruned))
        assert set(kernels) == set(pruned), sorted(kernels)
        zeros_moved[preserve] = {s: int(np.count_nonzero(kernels[s][m]))
                                 for s, m in pruned.items()}
    assert all(v == 0 for v in zeros_moved[True].values()), zeros_moved
    assert sum(zeros_moved[False].values()) > 0, zeros_moved  # the check can see a loss


def test_a_sequential_chain_is_taken():
    """A `keras.Sequential` (not a Functional on Keras 3.15) gives the spec of the same
    chain built Functional; an unbuilt one is refused with what to do."""
    func = chain_model()
    seq = keras.Sequential([keras.Input((8, 8, 1))] + [
        la.__class__.from_config(la.get_config()) for la in func.layers[1:]])
    assert model_spec(seq) == model_spec(func)
    with pytest.raises(TfmotEngineError, match="not built; start it with keras.Input"):
        model_spec(keras.Sequential([keras.layers.Dense(2)]))
