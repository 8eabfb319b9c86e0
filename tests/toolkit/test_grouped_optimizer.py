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


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_step_per_group_after_unscaling(policy):
    """Under mixed_float16 `compile` wraps the optimizer in a LossScaleOptimizer: the
    gradients reach the groups multiplied by 2^15 and are unscaled first. One SGD
    step must still be `lr * scale * grad` per group, against the same model's
    own (half-precision, unscaled) gradient; the scale-0 group stays bit-identical."""
    from kdl.backend.grads import compute_gradients

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="a")(inputs)
    h = keras.layers.Dense(3, name="c")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="b", dtype="float32")(h))
    lr, scales = 0.1, {"a": 0.25, "c": 0.0, "b": 1.0}
    opt = GroupedOptimizer(keras.optimizers.SGD(lr), {"^a/": 0.25, "^c/": 0.0})
    model.compile(optimizer=opt, loss="mse")
    x, t = 0.1 * X, 0.1 * T  # small gradients: 2^15 times them stays finite in float16
    before = _weights(model)
    _, grads = compute_gradients(model, x, t)
    model.fit(x, t, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    if policy == "mixed_float16":
        wrapper = model.optimizer
        assert isinstance(wrapper, keras.optimizers.LossScaleOptimizer)
        assert wrapper.inner_optimizer is opt
        # The step was taken, not skipped for an overflow.
        assert float(keras.ops.convert_to_numpy(wrapper.dynamic_scale)) == 2.0 ** 15
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 1
    assert [v.path for v in model.trainable_variables] == [p for p, _ in grads]
    for (path, g), w0, w1 in zip(grads, before, _weights(model), strict=True):
        scale = scales[path.split("/")[0]]
        if scale == 0:
            np.testing.assert_array_equal(w0, w1, err_msg=path)
        else:  # a power-of-two loss scale is exact; only the weight update rounds
            assert np.abs(g).max() > 1e-4, path  # a real step to compare
            np.testing.assert_allclose(w0 - w1, lr * scale * g, rtol=1e-3, atol=1e-6,
                                       err_msg=path)


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_mixed_precision_save_load_and_continue(tmp_path, policy):
    """LossScaleOptimizer(GroupedOptimizer(Adam)) saves with every state (loss scale,
    each group's moments) and training continues identically after a reload."""
    model = _model()
    opt = GroupedOptimizer(keras.optimizers.Adam(1e-2), {"^a/": 0.1})
    model.compile(optimizer=opt, loss="mse")
    model.fit(X, T, batch_size=4, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(loaded.optimizer.inner_optimizer, GroupedOptimizer)
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for v, w in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v),
                                      keras.ops.convert_to_numpy(w), err_msg=v.path)
    for m in (model, loaded):
        m.fit(X, T, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(_weights(model), _weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_groups_match_path_tails_so_a_reload_keeps_them(tmp_path):
    """A Sequential model's paths carry its name when built (`sequential_N/a/kernel`)
    and not when loaded (`a/kernel`): a pattern for the layer must match both."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                              keras.layers.Dense(2, name="b")])
    assert model.trainable_variables[0].path.endswith("/a/kernel")
    assert model.trainable_variables[0].path != "a/kernel"
    opt = GroupedOptimizer(keras.optimizers.Adam(1e-2), {"^a/": 0.5, "^b/kernel$": 0.0})
    _fit_one_step(model, opt, steps=2)
    assert list(opt.group_scales().values()) == [0.5, 0.5, 0.0, 1.0]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras").optimizer
    assert list(loaded.group_scales()) == ["a/kernel", "a/bias", "b/kernel", "b/bias"]
    assert list(loaded.group_scales().values()) == [0.5, 0.5, 0.0, 1.0]
    for v, w in zip(opt.variables, loaded.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v),
                                      keras.ops.convert_to_numpy(w))


def test_a_group_matching_nothing_is_warned_about():
    opt = GroupedOptimizer(keras.optimizers.SGD(0.1), {"^conv_": 0.1})
    with pytest.warns(UserWarning, match=r"\['\^conv_'\] match no trainable variable"):
        _fit_one_step(_model(), opt)
