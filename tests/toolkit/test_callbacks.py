"""Gradient statistics (NumPy oracle), weight EMA and gradient accumulation."""

import keras
import numpy as np
import pytest
from keras import ops

from kdl.backend.grads import compute_gradients
from kdl.callbacks import GradientStats, ReduceLROnPlateau, gradient_norms, optimizer_options
from kdl.registry import CALLBACKS
from kdl.schedules import StepDecay


def _linear_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, name="d1")(inputs)
    out = keras.layers.Dense(1, name="d2")(h)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1).astype("float32")
    return x, y


def _oracle_norms(model, x, y):
    w1, b1 = (ops.convert_to_numpy(v) for v in model.get_layer("d1").weights)
    w2, b2 = (ops.convert_to_numpy(v) for v in model.get_layer("d2").weights)
    h = x @ w1 + b1
    out = h @ w2 + b2
    d_out = 2 * (out - y) / out.size
    d_h = d_out @ w2.T
    n1 = np.sqrt(np.sum((x.T @ d_h) ** 2) + np.sum(d_h.sum(0) ** 2))
    n2 = np.sqrt(np.sum((h.T @ d_out) ** 2) + np.sum(d_out.sum(0) ** 2))
    return float(np.mean((out - y) ** 2)), n1, n2


def _by_layer(norms):
    return {k.rsplit("/", 1)[-1]: v for k, v in norms.items()}


def test_gradient_norms_match_numpy_oracle():
    model, (x, y) = _linear_mlp(), _data()
    loss, grads = compute_gradients(model, x, y)
    want_loss, n1, n2 = _oracle_norms(model, x, y)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    norms = _by_layer(gradient_norms(grads))
    assert norms["d1"] == pytest.approx(n1, rel=1e-4)
    assert norms["d2"] == pytest.approx(n2, rel=1e-4)


def test_grad_stats_callback_frequency_flags_and_log_fn():
    model, (x, y) = _linear_mlp(), _data(48)
    logged = []
    stats = GradientStats(x[:16], y[:16], every_n_steps=2, vanishing=1e-8, exploding=1e6,
                          log_fn=lambda m, step: logged.append((step, m)))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    assert [r["step"] for r in stats.history] == [2, 4, 6]
    assert [s for s, _ in logged] == [2, 4, 6]
    last = stats.history[-1]
    _, n1, n2 = _oracle_norms(model, x[:16], y[:16])  # probe after the last step
    assert _by_layer(last["norms"]) == pytest.approx({"d1": n1, "d2": n2}, rel=1e-4)
    assert last["vanishing"] == [] and last["exploding"] == []
    assert logged[-1][1]["grad_norm/global"] == pytest.approx(np.hypot(n1, n2), rel=1e-4)

    # A zero second layer blocks the gradient to the first: flagged vanishing.
    model.get_layer("d2").kernel.assign(np.zeros((4, 1), "float32"))
    assert [k.rsplit("/", 1)[-1] for k in stats.probe(99)["vanishing"]] == ["d1"]
    # Huge inputs: every layer explodes.
    big = GradientStats(x[:16] * 1e7, y[:16], exploding=1e3)
    big.set_model(model)
    model.get_layer("d2").kernel.assign(np.ones((4, 1), "float32"))
    assert len(big.probe(1)["exploding"]) == 2


def test_ema_weights_follow_the_formula():
    model, (x, y) = _linear_mlp(), _data(32)
    model.compile(optimizer=keras.optimizers.SGD(0.05, **optimizer_options(ema_momentum=0.8)),
                  loss="mse")
    raw = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # self.model syncs JAX state
            raw.append([ops.convert_to_numpy(v).copy() for v in self.model.trainable_variables])

    record = Record()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[record])
    avg = raw[0]
    for w in raw[1:]:
        avg = [0.8 * a + 0.2 * b for a, b in zip(avg, w, strict=True)]
    final = [ops.convert_to_numpy(v) for v in model.trainable_variables]  # fit swaps EMA in
    for got, want, last_raw in zip(final, avg, raw[-1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, last_raw)


def test_gradient_accumulation_equals_large_batch():
    x, y = _data(32)
    big = _linear_mlp(seed=3)
    acc = _linear_mlp(seed=3)
    big.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    acc.compile(optimizer=keras.optimizers.SGD(0.1, **optimizer_options(accumulation_steps=4)),
                loss="mse")
    big.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    acc.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(acc.trainable_variables, big.trainable_variables, strict=True):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"ema_momentum": 1.5}, "ema_momentum"),
    ({"ema_overwrite_every": 10}, "needs ema_momentum"),
    ({"accumulation_steps": 0}, "accumulation_steps"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, "one gradient clipping"),
])
def test_optimizer_options_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimizer_options(**kwargs)


def test_reduce_lr_on_plateau_refuses_a_schedule():
    assert CALLBACKS.get("reduce_lr_on_plateau").obj is ReduceLROnPlateau
    model, (x, y) = _linear_mlp(), _data(16)
    model.compile(optimizer=keras.optimizers.SGD(StepDecay(0.1, 10)), loss="mse")
    with pytest.raises(ValueError, match="constant learning rate"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ReduceLROnPlateau(patience=1)])
    # And with a constant rate it reduces it.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # loss never improves
    model.fit(x, y, epochs=4, verbose=0,
              callbacks=[ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5, min_lr=0)])
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == 0.0
