"""Each schedule against its formula (NumPy oracle) at chosen steps, eager and jitted."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from kdl.backend import keras_private
from kdl.backend.jit import jit
from kdl.registry import SCHEDULES
from kdl.schedules import (
    CosineDecay,
    CosineWarmRestarts,
    ExponentialDecay,
    NoamSchedule,
    OneCycle,
    StepDecay,
    plot_schedule,
    schedule_values,
)

STEPS = [0, 1, 7, 50, 99, 100, 101, 333, 999, 1500]


def _cos(a, b, f):
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * f))


def _sgdr(step, lr, first, mult, peak_mult, r):
    start, length, i = 0, first, 0
    while step >= start + length:
        start += length
        length *= mult
        i += 1
    return lr * peak_mult**i * _cos(1.0, r, (step - start) / length)


def _one_cycle(step, mx, total, pct, div, final_div):
    init, floor = mx / div, mx / div / final_div
    p = pct * total - 1
    s = min(step, total - 1)
    if s <= p:
        return _cos(init, mx, s / p)
    return _cos(mx, floor, (s - p) / (total - 1 - p))


CASES = {
    "step": (StepDecay(0.1, step_size=100, gamma=0.5),
             lambda s: 0.1 * 0.5 ** (s // 100)),
    "exponential": (ExponentialDecay(0.01, decay_steps=200, decay_rate=0.9),
                    lambda s: 0.01 * 0.9 ** (s / 200)),
    "exponential_stairs": (ExponentialDecay(0.01, 200, 0.9, staircase=True),
                           lambda s: 0.01 * 0.9 ** (s // 200)),
    "cosine": (CosineDecay(0.02, decay_steps=1000, min_lr_ratio=0.1),
               lambda s: 0.02 * _cos(1.0, 0.1, min(s, 1000) / 1000)),
    "sgdr_equal": (CosineWarmRestarts(0.1, first_period=100),
                   lambda s: _sgdr(s, 0.1, 100, 1, 1.0, 0.0)),
    "sgdr_growing": (CosineWarmRestarts(0.1, 100, period_mult=2.0, peak_mult=0.5,
                                        min_lr_ratio=0.05),
                     lambda s: _sgdr(s, 0.1, 100, 2, 0.5, 0.05)),
    "noam": (NoamSchedule(d_model=64, warmup_steps=100, scale=2.0),
             lambda s: 2.0 * 64**-0.5 * min((s + 1) ** -0.5, (s + 1) * 100**-1.5)),
    "one_cycle": (OneCycle(0.05, total_steps=1000, pct_start=0.25),
                  lambda s: _one_cycle(s, 0.05, 1000, 0.25, 25.0, 1e4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_formula_eager_and_jitted(name):
    schedule, oracle = CASES[name]
    expected = np.array([oracle(s) for s in STEPS])
    eager = np.array([float(ops.convert_to_numpy(schedule(s))) for s in STEPS])
    np.testing.assert_allclose(eager, expected, rtol=2e-5, atol=1e-9)

    compiled = jit(lambda step: schedule(step))
    jitted = np.array([
        float(ops.convert_to_numpy(compiled(ops.convert_to_tensor(s, "int32"))))
        for s in STEPS])
    np.testing.assert_allclose(jitted, expected, rtol=2e-5, atol=1e-9)

    # Elementwise: a vector of steps gives the same values (used by the plot).
    np.testing.assert_allclose(schedule_values(schedule, 1501)[STEPS], expected,
                               rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_serializes(name):
    schedule, _ = CASES[name]
    blob = keras.saving.serialize_keras_object(schedule)
    assert blob["registered_name"].startswith("kdl>")
    restored = keras.saving.deserialize_keras_object(blob)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for s in (0, 123, 777):
        assert float(ops.convert_to_numpy(restored(s))) == pytest.approx(
            float(ops.convert_to_numpy(schedule(s))), rel=1e-6)


def test_registered_by_name():
    for key in ("step", "exponential", "cosine", "cosine_restarts", "noam", "one_cycle"):
        assert key in SCHEDULES
    s = SCHEDULES.build("noam", d_model=16, warmup_steps=10)
    assert isinstance(s, NoamSchedule)


def test_schedule_drives_optimizer_in_compiled_fit(tmp_path):
    """The schedule inside a compiled train step; the rate seen matches the formula."""
    schedule = OneCycle(0.05, total_steps=12, pct_start=0.5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    x = np.random.default_rng(0).normal(size=(24, 3)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0)  # 12 steps
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 12
    lr_now = float(ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr_now == pytest.approx(_one_cycle(12, 0.05, 12, 0.5, 25.0, 1e4), rel=1e-5)
    # Saved with the model and restored as the kdl class.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(keras_private.learning_rate_schedule(loaded.optimizer), OneCycle)


@pytest.mark.once
def test_one_cycle_matches_torch_one_cycle_lr():
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200,
                                                pct_start=0.3, cycle_momentum=False)
    ref = []
    for _ in range(200):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = schedule_values(OneCycle(0.05, total_steps=200, pct_start=0.3), 200)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("kwargs, match", [
    ({"initial_learning_rate": -1.0, "step_size": 10}, "initial_learning_rate"),
    ({"initial_learning_rate": 0.1, "step_size": 0}, "step_size"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepDecay(**kwargs)


def test_bad_one_cycle_and_restart_arguments():
    with pytest.raises(ValueError, match="pct_start"):
        OneCycle(0.1, total_steps=3, pct_start=0.1)
    with pytest.raises(ValueError, match="period_mult"):
        CosineWarmRestarts(0.1, 10, period_mult=0.5)


def test_plot_schedule_writes_png(tmp_path):
    path = plot_schedule(CASES["sgdr_growing"][0], 800, str(tmp_path / "lr.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lr.png"]  # no temp file left
