"""Per-group learning rates: `kdl.optimizers.GroupedOptimizer` inside compiled `model.fit`,
checked against a NumPy gradient (SGD), plain Adam (scale 1), a frozen group, save/load."""

import keras
import numpy as np
import pytest

from kdl.optimizers import GroupedOptimizer, ScaledSchedule

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 4)).astype("float32")
T = RNG.normal(size=(16, 2)).astype("float32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="b")(h))


def _weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]  # A, a, B, b


def _numpy_grads(A, a, B, b):
    """d mean((x A + a) B + b - t)^2 / d (A, a, B, b)."""
    h = X @ A + a
    r = 2.0 * (h @ B + b - T) / T.size
    gh = r @ B.T
    return [X.T @ gh, gh.sum(0), h.T @ r, r.sum(0)]


def _fit_one_step(model, optimizer, steps=1):
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, T, batch_size=len(X), epochs=steps, shuffle=False, verbose=0)


def test_sgd_step_is_lr_times_scale_times_grad_per_group():
    model = _model()
    before = _weights(model)
    lr = 0.1
    opt = GroupedOptimizer(keras.optimizers.SGD(lr), [{"match": "^a/", "lr_scale": 0.25}])
    _fit_one_step(model, opt)
    grads = _numpy_grads(*before)
    scales = [0.25, 0.25, 1.0, 1.0]  # layer a's kernel and bias; b is in the default group
    assert opt.group_scales() == {"a/kernel": 0.25, "a/bias": 0.25,
                                  "b/kernel": 1.0, "b/bias": 1.0}
    for w0, w1, g, s in zip(before, _weights(model), grads, scales, strict=True):
        np.testing.assert_allclose(w0 - w1, lr * s * g, rtol=1e-4, atol=1e-7)


def test_adam_scale_one_group_equals_plain_adam_and_zero_freezes():
    reference = _model()
    reference.get_layer("a").trainable = False
    _fit_one_step(reference, keras.optimizers.Adam(1e-2), steps=5)

    model = _model()
    before = _weights(model)
    opt = GroupedOptimizer(keras.optimizers.Adam(1e-2), {"^a/": 0.0, "^b/": 1.0})
    _fit_one_step(model, opt, steps=5)
    after = _weights(model)
    for w0, w1 in zip(before[:2], after[:2], strict=True):  # frozen: not touched at all
        np.testing.assert_array_equal(w0, w1)
    for w, r in zip(after[2:], _weights(reference)[2:], strict=True):
        np.testing.assert_allclose(w, r, rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[2], before[2])  # the open group trained
    assert len(opt.inner_optimizers) == 1  # the frozen group has no optimizer state
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 5


def test_save_load_keeps_groups_and_state(tmp_path):
    model = _model()
    opt = GroupedOptimizer(keras.optimizers.Adam(1e-2), [{"match": "^a/", "lr_scale": 0.1}])
    _fit_one_step(model, opt, steps=3)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, GroupedOptimizer)
    assert loaded.optimizer.groups == [{"match": "^a/", "lr_scale": 0.1}]
    for v, w in zip(opt.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v),
                                      keras.ops.convert_to_numpy(w))
    # Training on continues identically from the reloaded state (Adam moments included).
    for m in (model, loaded):
        m.fit(X, T, batch_size=len(X), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(_weights(model), _weights(loaded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_schedule_is_scaled_per_group_and_rate_setter_follows():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    opt = GroupedOptimizer(keras.optimizers.SGD(schedule), {"^a/": 0.5})
    model = _model()
    _fit_one_step(model, opt, steps=2)
    rates = sorted(float(keras.ops.convert_to_numpy(o.learning_rate))
                   for o in opt.inner_optimizers)
    expected = float(schedule(2))
    np.testing.assert_allclose(rates, [0.5 * expected, expected], rtol=1e-6)
    assert isinstance(ScaledSchedule.from_config(ScaledSchedule(schedule, 0.5).get_config()),
                      ScaledSchedule)

    plain = GroupedOptimizer(keras.optimizers.SGD(0.2), {"^a/": 0.5})
    _fit_one_step(_model(), plain)
    plain.learning_rate = 0.02  # e.g. ReduceLROnPlateau
    rates = sorted(float(keras.ops.convert_to_numpy(o.learning_rate))
                   for o in plain.inner_optimizers)
    np.testing.assert_allclose(rates, [0.01, 0.02], rtol=1e-6)


def test_bad_groups_are_named():
    with pytest.raises(ValueError, match="not a regular expression"):
        GroupedOptimizer(keras.optimizers.SGD(0.1), {"conv_(": 0.1})
    with pytest.raises(ValueError, match="lr_scale must be >= 0"):
        GroupedOptimizer(keras.optimizers.SGD(0.1), {"conv_": -1})
    with pytest.raises(ValueError, match="expected"):
        GroupedOptimizer(keras.optimizers.SGD(0.1), [{"pattern": "conv_", "lr_scale": 1}])
