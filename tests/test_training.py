"""kdl.training: schedule, precision policy, non-finite-loss guard, metrics."""

import math

import keras
import numpy as np
import pytest

from kdl import training
from kdl.backend import distribution, resolve_precision
from kdl.config import TrainConfig
from kdl.data import DataSplits, Normalizer, Split
from kdl.models import build_model
from kdl.schedules import WarmupCosine


def warmup_cosine_oracle(step, peak, total, warmup, ratio):
    if step < warmup:
        return peak * step / warmup
    p = min(1.0, (step - warmup) / max(total - warmup, 1))
    floor = peak * ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * p))


def jitted(fn):
    """Compile `fn` the way the backend's trainer does (torch runs it eagerly)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return fn


@pytest.mark.parametrize("warmup", [0, 10])
def test_warmup_cosine_matches_formula_eagerly_and_under_jit(warmup):
    sched = WarmupCosine(peak_lr=0.1, total_steps=100, warmup_steps=warmup, min_lr_ratio=0.05)
    compiled = jitted(lambda s: sched(s))
    for step in [0, 1, 5, 9, 10, 11, 50, 99, 100, 150]:
        want = warmup_cosine_oracle(step, 0.1, 100, warmup, 0.05)
        got = float(keras.ops.convert_to_numpy(sched(step)))
        got_jit = float(keras.ops.convert_to_numpy(compiled(keras.ops.convert_to_tensor(step))))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-8), step
        assert got_jit == pytest.approx(want, rel=1e-5, abs=1e-8), step


def test_warmup_cosine_serializes_and_rejects_bad_steps():
    sched = WarmupCosine(0.01, 50, 5, 0.1)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert isinstance(again, WarmupCosine) and again.get_config() == sched.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(0.01, total_steps=10, warmup_steps=20)


def test_precision_policy():
    assert resolve_precision("auto") == "float32"  # this CI machine has no accelerator
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model("cnn", (8, 8, 1), 10, preset="tiny")
        assert model.get_layer("conv_0").compute_dtype == "bfloat16"
        out = model(np.zeros((2, 8, 8, 1), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"  # the head stays fp32
    finally:
        keras.config.set_dtype_policy("float32")


def _toy_regression(n=64, scale=1.0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32") * scale
    y = (x @ np.array([1.0, -2.0, 3.0, 0.5], "float32")) * scale
    split = Split(x, y.astype("float32"))
    return DataSplits(split, split, split, "regression", [], Normalizer.identity(x), "toy")


def test_non_finite_loss_stops_training_with_a_diagnosis():
    splits = _toy_regression(scale=1e3)
    cfg = TrainConfig(epochs=5, optimizer="sgd", learning_rate=1e4, schedule="constant",
                      clipnorm=None, verbose=0)
    training.prepare(cfg)
    model = build_model("mlp", (4,), 1, task="regression", preset="tiny")
    training.compile_for(model, "regression", cfg, steps_per_epoch=4)
    result = training.fit(model, splits, cfg, batch_size=16)
    d = result.diagnosis
    assert d is not None
    assert result.epochs_run <= 2
    assert d["epoch"] == 1 and d["step"] >= 1
    assert not math.isfinite(d["loss"])
    assert d["learning_rate"] == pytest.approx(1e4)
    assert "learning rate" in d["message"] and f"epoch {d['epoch']}" in d["message"]


def test_nan_guard_keeps_the_training_loop_asynchronous():
    """Keras runs an async_safe guard's batch hook off the loop (JAX, PyTorch): no host
    read of the loss per step. TensorFlow's CallbackList never dispatches asynchronously."""
    from kdl.callbacks import TerminateOnNonFinite

    callbacks = keras.callbacks.CallbackList([TerminateOnNonFinite()])
    assert callbacks._async_train == (keras.backend.backend() != "tensorflow")

    class Blocking(keras.callbacks.Callback):  # the oracle: a plain batch hook is synchronous
        def on_train_batch_end(self, batch, logs=None):
            pass

    assert not keras.callbacks.CallbackList([TerminateOnNonFinite(), Blocking()])._async_train


def test_nan_guard_diagnoses_the_first_bad_step_from_hooks_out_of_order():
    from kdl.callbacks import TerminateOnNonFinite

    model = build_model("mlp", (4,), 1, task="regression", preset="tiny")
    model.compile(keras.optimizers.SGD(0.5), "mse")
    guard = TerminateOnNonFinite()
    guard.set_model(model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 4.0})
    guard.on_epoch_begin(1)  # epoch 2: its hooks arrive late and out of order
    for step, loss in [(5, math.nan), (1, 3.0), (3, math.inf), (0, 3.5), (2, 2.5), (4, math.nan)]:
        guard.on_train_batch_end(step, {"loss": loss})
    guard.on_epoch_end(1)  # as Keras does: weights and rate are read on the loop's thread
    d = guard.diagnosis
    assert (d["epoch"], d["step"], d["loss"]) == (2, 4, math.inf)
    assert d["last_finite_loss"] == 2.5 and d["learning_rate"] == pytest.approx(0.5)
    assert model.stop_training
    with pytest.raises(RuntimeError, match="at epoch 2, step 4 .last finite loss 2.5"):
        guard.raise_if_failed()
    healthy = TerminateOnNonFinite()
    healthy.set_model(model)
    healthy.on_train_batch_end(0, {"loss": 1.0})
    assert healthy.diagnosis is None


def test_score_matches_numpy_definitions():
    y = np.array([0, 1, 2, 1])
    p = np.array([[.8, .1, .1], [.2, .7, .1], [.5, .3, .2], [.1, .8, .1]], "float32")
    s = training.score("classification", y, p)
    assert s["accuracy"] == 0.75
    assert s["loss"] == pytest.approx(-np.mean(np.log([.8, .7, .2, .8])), rel=1e-6)
    r = training.score("regression", np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [4.0]]))
    assert r["mse"] == pytest.approx(1 / 3) and r["r2"] == pytest.approx(1 - 1 / 2)


def test_in_memory_batches_are_seeded_permutations_reshuffled_every_epoch():
    from kdl.data.feed import ArrayBatches

    n = 10
    x0 = np.arange(n, dtype="float32")[:, None]
    split = Split((x0, -x0), np.arange(n), weight=np.arange(n) / 10)

    def epochs(seed, count=3):
        feed = ArrayBatches(split, 4, shuffle=True, seed=seed)
        out = []
        for _ in range(count):
            batches = [feed[i] for i in range(len(feed))]
            for (a, b), y, w in batches:  # the inputs, targets and weights stay together
                np.testing.assert_array_equal(a[:, 0], y)
                np.testing.assert_array_equal(b[:, 0], -y)
                np.testing.assert_allclose(w, y / 10)
            out.append(np.concatenate([y for _, y, _ in batches]))
            feed.on_epoch_end()
        return out

    first = epochs(seed=3)
    assert len(ArrayBatches(split, 4)) == 3 and len(ArrayBatches(split, 4,
                                                                drop_remainder=True)) == 2
    for order in first:  # every example once per epoch
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(first[0], first[1])  # reshuffled after an epoch
    for a, b in zip(first, epochs(seed=3), strict=True):  # the seed repeats the run
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], epochs(seed=4)[0])
    np.testing.assert_array_equal(  # unshuffled: in order (validation)
        np.concatenate([ArrayBatches(split, 4)[i][1] for i in range(3)]), np.arange(n))


def test_a_sharded_feed_gives_each_process_its_slice_of_the_global_batch():
    from kdl.data.feed import ArrayBatches

    n = 22
    split = Split(np.arange(n, dtype="float32")[:, None], np.arange(n))
    whole = ArrayBatches(split, 8, shuffle=True, seed=5, drop_remainder=True)
    parts = [ArrayBatches(split, 8, shuffle=True, seed=5, drop_remainder=True, shard=(i, 2))
             for i in range(2)]
    for _ in range(2):  # the same global batches, epoch after epoch
        assert len(whole) == len(parts[0]) == 2
        for i in range(len(whole)):
            np.testing.assert_array_equal(
                np.concatenate([p[i][1] for p in parts]), whole[i][1])
            assert len(parts[1][i][1]) == 4
        for feed in (whole, *parts):
            feed.on_epoch_end()
    for bad in ({"shard": (0, 3)}, {"shard": (2, 2)}, {"shard": (0, 2), "drop_remainder": False}):
        with pytest.raises(ValueError):
            ArrayBatches(split, 8, **{"drop_remainder": True, **bad})


def test_training_feeds_in_memory_data_in_line_on_jax_and_torch():
    splits = _toy_regression()
    train, val = training.train_and_val(splits, 16, seed=0)
    in_line = keras.backend.backend() != "tensorflow"  # TensorFlow: tf.data in its graph
    assert training.in_line_feed(splits) is in_line
    with distribution.Distributed().scope():  # a pipeline run's scope, kind none
        assert training.in_line_feed(splits) is in_line
    assert isinstance(train, keras.utils.PyDataset) is in_line
    cfg = TrainConfig(epochs=2, optimizer="sgd", learning_rate=1e-2, schedule="constant",
                      verbose=0)
    training.prepare(cfg)
    model = build_model("mlp", (4,), 1, task="regression", preset="tiny")
    training.compile_for(model, "regression", cfg, steps_per_epoch=4)
    result = training.fit(model, splits, cfg, batch_size=16)
    loss = result.history["loss"]
    assert len(loss) == 2 and all(math.isfinite(v) for v in loss) and loss[1] < loss[0]
