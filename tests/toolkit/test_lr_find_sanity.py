"""LR range test on a quadratic toy problem; overfit-one-batch on a healthy and a broken model."""

import keras
import numpy as np
import pytest
from keras import ops

from kdl.lr_find import lr_find, plot_lr_find, suggest_lr
from kdl.sanity import SanityCheckFailed, overfit_one_batch


def _regression(n=256, d=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + 0.01 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def test_lr_find_suggests_inside_the_stable_range(tmp_path):
    x, y = _regression()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    before = [ops.convert_to_numpy(w).copy() for w in model.weights]
    result = lr_find(model, x, y, min_lr=1e-5, max_lr=10.0, num_steps=100, batch_size=32)
    # SGD on mean squared error diverges above 2 / max eigenvalue of 2 X^T X / n.
    lr_crit = 2 / np.linalg.eigvalsh(2 * x.T @ x / len(x)).max()
    assert result.diverged and result.lrs[-1] > lr_crit
    assert lr_crit / 100 < result.suggestion < lr_crit
    i = int(np.argmin(np.abs(result.lrs - result.suggestion)))
    assert result.smoothed[i + 2] < result.smoothed[i - 2]  # falling there
    assert result.smoothed.min() < 0.1 * result.smoothed[0]
    for a, b in zip(before, model.weights, strict=True):  # the model is untouched
        np.testing.assert_array_equal(a, ops.convert_to_numpy(b))
    png = plot_lr_find(result, str(tmp_path / "lr_find.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_suggest_lr_is_the_steepest_descent():
    lrs = np.logspace(-5, 0, 50)
    loss = 1 / (1 + np.exp(4 * (np.log10(lrs) + 2.5)))  # falls fastest at 10**-2.5
    assert suggest_lr(lrs, loss) == pytest.approx(10**-2.5, rel=0.3)
    with pytest.raises(ValueError, match="too few"):
        suggest_lr(lrs[:2], loss[:2])


def _classifier(broken: bool):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    h = keras.layers.Rescaling(0.0)(inputs) if broken else inputs  # broken: input ignored
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(4, activation="softmax")(h)
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_overfit_one_batch_passes_a_healthy_model_and_fails_a_broken_one():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 4, size=64).astype("int32")  # random labels: memorization only
    good = overfit_one_batch(_classifier(False), x, y, batch_size=16, steps=100)
    assert good.passed and good.final_loss < 0.05 < good.initial_loss
    with pytest.raises(SanityCheckFailed, match="cannot memorize one batch") as info:
        overfit_one_batch(_classifier(True), x, y, batch_size=16, steps=100)
    assert not info.value.result.passed and info.value.result.final_loss > 0.5
