"""A run killed with SIGKILL mid-epoch and resumed ends like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kdl.callbacks.checkpoint import EpochShuffledData, latest_checkpoint
from kdl.testing import mixed_policy

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def test_epoch_order_depends_only_on_seed_and_epoch():
    x = np.arange(20, dtype="float32")[:, None]
    a = EpochShuffledData(x, x, batch_size=4, seed=1)
    b = EpochShuffledData(x, x, batch_size=4, seed=1)
    a.set_epoch(0)
    a.set_epoch(3)
    b.set_epoch(3)
    assert np.array_equal(a[2][0], b[2][0])
    b.set_epoch(4)
    assert not np.array_equal(np.concatenate([a[i][0] for i in range(5)]),
                              np.concatenate([b[i][0] for i in range(5)]))
    part = EpochShuffledData(x, x, batch_size=4, seed=1, start_batch=2)
    part.set_epoch(3)
    assert len(part) == 3 and np.array_equal(part[0][0], a[2][0])


def test_process_shards_are_the_slices_of_the_global_batch():
    """Process k of n takes the k-th contiguous slice of each global batch (as Keras's
    `rebatch` + `shard` of a tf.data input), restarted mid-epoch like the global one."""
    import pytest

    x = np.arange(22, dtype="float32")[:, None]
    whole = EpochShuffledData(x, x, batch_size=4, seed=1, drop_remainder=True)
    shards = [EpochShuffledData(x, x, batch_size=4, seed=1, drop_remainder=True,
                                shard=(k, 2), start_batch=3) for k in range(2)]
    for d in (whole, *shards):
        d.set_epoch(2)
    assert len(shards[0]) == 2  # 5 full batches, restarted at the 4th
    for i in range(2):
        got = np.concatenate([s[i][0] for s in shards])
        assert np.array_equal(got, whole[i + 3][0])
    assert not np.array_equal(shards[0][0][0], shards[1][0][0])
    with pytest.raises(ValueError, match="drop_remainder"):
        EpochShuffledData(x, x, batch_size=3, shard=(0, 2), drop_remainder=True)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["KERAS_BACKEND"] = keras.backend.backend()
    return env


class _Interrupt(Exception):
    pass


def _interrupted_then_resumed(tmp_path, grouped=False):
    """Train uninterrupted, then stopped by an exception at step 43 and resumed in
    process (the fast stand-in for a kill); returns both runs' weights and
    optimizer variables."""
    from kdl.callbacks.checkpoint import fit_resumable
    from tests.toolkit import resume_worker as w

    ref = w.train(str(tmp_path / "ref"), grouped=grouped)

    class Stop(keras.callbacks.Callback):  # counts batches: a loss-scale skip is a batch too
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == 43:
                raise _Interrupt

    x, y = w.data()
    with pytest.raises(_Interrupt):
        fit_resumable(w.build(grouped), x, y, epochs=w.EPOCHS, batch_size=w.BATCH, seed=3,
                      directory=tmp_path / "ckpt", every_n_steps=10, callbacks=[Stop()])
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-000000040"
    return ref, w.train(str(tmp_path / "ckpt"), grouped=grouped)


def test_interrupted_in_process_then_resumed_matches_uninterrupted(tmp_path):
    (ref_weights, ref_opt), (weights, opt) = _interrupted_then_resumed(tmp_path)
    for a, b in zip(weights + opt, ref_weights + ref_opt, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["float32", mixed_policy()], indirect=True)
def test_grouped_optimizer_interrupted_then_resumed_matches_uninterrupted(tmp_path, policy):
    """Per-group rates (a frozen group, a 0.3x group, the default) survive a resume:
    the weights and every optimizer variable (each group's step counter and
    moments; under mixed_float16 the loss scale too) end bit-identical. The
    Sequential model's variable paths carry its name (`sequential_3/hidden/...`)
    when built and not when loaded from the checkpoint; the groups must not move."""
    from kdl.optimizers import GroupedOptimizer

    (ref_weights, ref_opt), (weights, opt) = _interrupted_then_resumed(tmp_path, grouped=True)
    assert len(opt) == len(ref_opt)
    for a, b in zip(weights + opt, ref_weights + ref_opt, strict=True):
        np.testing.assert_array_equal(a, b)
    model = keras.saving.load_model(latest_checkpoint(tmp_path / "ckpt") / "model.keras")
    grouped = model.optimizer
    if policy == "mixed_float16":
        assert isinstance(grouped, keras.optimizers.LossScaleOptimizer)
        grouped = grouped.inner_optimizer
    assert isinstance(grouped, GroupedOptimizer)
    assert grouped.group_scales() == {"hidden/kernel": 0.3, "hidden/bias": 0.0,
                                      "out/kernel": 1.0, "out/bias": 1.0}
    assert [int(keras.ops.convert_to_numpy(o.iterations)) for o in grouped.inner_optimizers] \
        == [int(keras.ops.convert_to_numpy(grouped.iterations))] * 2


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """Deterministic on CPU on all three backends (TF, JAX, PyTorch): compared exactly."""
    worker = [sys.executable, str(HERE / "resume_worker.py")]
    # Uninterrupted reference, in its own process like the others.
    ref = subprocess.run([*worker, str(tmp_path / "ref_ckpt"), str(tmp_path / "ref.npz")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([*worker, str(ckpt), str(tmp_path / "out.npz"), "0.03"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    killed_at = None
    for line in proc.stdout:  # 16 steps per epoch: kill in the middle of epoch 2
        if line.startswith("step ") and int(line.split()[1]) >= 43:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = int(line.split()[1])
            break
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    state = json.loads((latest_checkpoint(ckpt) / "state.json").read_text())
    assert 40 <= state["global_step"] <= killed_at and state["epoch"] == 2
    assert 0 < state["batch_in_epoch"] < 16  # a mid-epoch checkpoint
    assert not list(ckpt.glob(".*.tmp"))  # no temp folder left in force

    res = subprocess.run([*worker, str(ckpt), str(tmp_path / "out.npz")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from step-{state['global_step']:09d}" in res.stdout
    ref_arrays, out_arrays = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
    assert sorted(ref_arrays.files) == sorted(out_arrays.files)
    for k in ref_arrays.files:  # weights and every optimizer variable (step, moments)
        np.testing.assert_array_equal(out_arrays[k], ref_arrays[k], err_msg=k)
    final = json.loads((latest_checkpoint(ckpt) / "state.json").read_text())
    assert final["epoch"] == 6 and final["global_step"] == 96


def test_pointer_to_a_missing_folder_means_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "latest").write_text("step-000000005\n")  # a kill before the folder landed
    assert latest_checkpoint(tmp_path) is None
