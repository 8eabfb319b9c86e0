"""Checkpoint and resume: a run killed at any moment continues to the same end.

Three pieces work together:

- `EpochShuffledData`: the training batches, shuffled per epoch by
  `(seed, epoch)` alone, so epoch `e` has the same order whether the run
  started at epoch 0 or resumed at `e` (a `tf.data` shuffle depends on how
  many epochs the same iterator already ran, and a fresh one starts over).
- `ResumableCheckpoint`: at each epoch end (and every N steps) it writes the
  model with its optimizer state (`model.keras`), the random-generator state
  (dropout seed generators, NumPy, Python, torch's global generator) and the
  position (epoch, step in epoch, global step) into a new folder, then points `latest` at it with an
  atomic rename. A kill mid-write leaves the previous checkpoint in force.
- `fit_resumable`: `model.fit` that starts from the latest checkpoint when
  there is one (finishing a part-done epoch first).

Resume is not fine-tuning: it restores the optimizer's moments, its step
counter (so schedules continue where they were) and the data position.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from pathlib import Path

import keras
import numpy as np

from kdl.backend.rng import get_global_rng_state, set_global_rng_state
from kdl.data.feed import shard_slice
from kdl.io import atomic_write_text

LATEST = "latest"


class EpochShuffledData(keras.utils.PyDataset):
    """`(x, y)` batches in an order that depends only on `(seed, epoch)`.

    Args:
        x, y: the training arrays.
        batch_size: examples per batch (the last batch may be smaller).
        seed: base seed of the per-epoch permutations.
        shuffle: False keeps the stored order.
        start_batch: skip this many batches (used once, to finish a part-done epoch).
        drop_remainder: leave out the last, smaller batch (JAX data parallel splits
            every batch evenly over its devices).
        shard: `(index, count)`: this process's part of each batch when `count`
            processes train one run (JAX multi-process data parallel): the
            `index`-th of `count` equal, contiguous slices of the global batch,
            which is how Keras shards a `tf.data` input (`rebatch` to
            `batch_size / count`, then `shard(count, index)`). Needs
            `drop_remainder` and a `batch_size` that `count` divides.

    Call `data.set_epoch(e)` before epoch `e` (`data.callback()` does it
    inside `fit`).
    """

    def __init__(self, x, y, batch_size: int, seed: int = 0, shuffle: bool = True,
                 start_batch: int = 0, drop_remainder: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__(workers=1, use_multiprocessing=False)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        self._slice = shard_slice(batch_size, shard, drop_remainder)  # this process's rows
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.start_batch = int(start_batch)
        self.drop_remainder = drop_remainder
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        n = len(self.x)
        self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                       if self.shuffle else np.arange(n))

    @property
    def batches_per_epoch(self) -> int:
        rounding = math.floor if self.drop_remainder else math.ceil
        return rounding(len(self.x) / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __getitem__(self, index):
        i = index + self.start_batch
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size][self._slice]
        return self.x[idx], self.y[idx]

    def callback(self) -> keras.callbacks.Callback:
        data = self

        class _SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                data.set_epoch(epoch)

        return _SetEpoch()


def _seed_states(model: keras.Model) -> list:
    """The state variables of the model's seed generators (dropout, noise, ...)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The folder `latest` points at, or None when there is no checkpoint yet."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves everything a resumed run needs, atomically, each epoch and every N steps.

    Args:
        directory: where checkpoints go (`step-<n>/` folders and a `latest` pointer).
        every_n_steps: also checkpoint every this many optimizer steps (None: epochs only).
        keep: how many checkpoint folders to keep (older ones are deleted).
        early_stopping: a `keras.callbacks.EarlyStopping` whose counters and best
            weights are saved and restored too (place it before this callback).
        initial_state: the loaded `state.json` of the checkpoint being resumed,
            used to restore early stopping and the step count (set by `fit_resumable`).
        write: False on every process but one when several train one run: the
            checkpoint is written once (it counts steps all the same).

    Example:

    ```python
    fit_resumable(model, x, y, epochs=20, batch_size=32, directory="run/ckpt")
    # killed? the same call again continues from the last checkpoint
    ```
    """

    def __init__(self, directory: str | Path, every_n_steps: int | None = None, keep: int = 2,
                 early_stopping: keras.callbacks.EarlyStopping | None = None,
                 initial_state: dict | None = None, batches_per_epoch: int | None = None,
                 start_batch: int = 0, write: bool = True):
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.early_stopping = early_stopping
        self.initial_state = initial_state or {}
        self.batches_per_epoch = batches_per_epoch
        self.start_batch = start_batch
        self.write = write
        self.global_step = int(self.initial_state.get("global_step", 0))
        self._epoch = 0
        self._batch_in_epoch = 0
        self._pending_rng = self.initial_state.pop("backend_rng", None)

    def on_train_begin(self, logs=None):
        es, saved = self.early_stopping, self.initial_state.get("early_stopping")
        if es is not None and saved:
            es.wait, es.best, es.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
            path = self.directory / self.initial_state.get("folder", "") / "es_best_weights.npz"
            if "es_best_weights" in self.initial_state:  # carried in memory
                es.best_weights = self.initial_state["es_best_weights"]
            elif path.is_file():
                with np.load(path) as f:
                    es.best_weights = [f[f"w{i}"] for i in range(len(f.files))]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batch_in_epoch = self.start_batch
        # PyTorch's data loader draws from the global RNG when an epoch's iterator
        # is made (after this hook). A checkpoint taken at an epoch end is restored
        # before that draw; one taken mid-epoch, after it (first batch begin).
        if self._pending_rng is not None and not self.start_batch:
            set_global_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._pending_rng is not None:
            set_global_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, batch, logs=None):
        self.global_step += 1
        self._batch_in_epoch += 1
        if self.every_n_steps and self.global_step % self.every_n_steps == 0:
            if self.batches_per_epoch is None or self._batch_in_epoch < self.batches_per_epoch:
                self.save(self._epoch, self._batch_in_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.start_batch = 0  # a part-done epoch is finished once
        self.save(epoch + 1, 0, logs)

    def save(self, epoch: int, batch_in_epoch: int, logs: dict | None = None) -> Path | None:
        """Write a checkpoint for position (epoch, batch_in_epoch) (None where `write` is off)."""
        # On JAX this syncs the trained state into the variables: on several processes a
        # computation on global arrays that every process must run (process 0 alone hangs).
        model = self.model
        if not self.write:
            return None
        name = f"step-{self.global_step:09d}"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with _outside_jax_distribution():
            model.save(tmp / "model.keras")
        arrays = {f"s{i}": keras.ops.convert_to_numpy(v)
                  for i, v in enumerate(_seed_states(model))}
        backend_rng = get_global_rng_state()
        if backend_rng is not None:
            arrays["backend_rng"] = backend_rng
        np.savez(tmp / "seed_states.npz", **arrays)
        state = {
            "folder": name, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "global_step": self.global_step,
            "logs": {k: float(v) for k, v in (logs or {}).items()},
            "numpy_rng": _jsonable_numpy_state(np.random.get_state()),
            "python_rng": _jsonable(random.getstate()),
        }
        es = self.early_stopping
        if es is not None:
            state["early_stopping"] = {"wait": int(es.wait), "best_epoch": int(es.best_epoch),
                                       "best": float(es.best) if es.best is not None else None}
            if es.best_weights is not None:
                np.savez(tmp / "es_best_weights.npz",
                         **{f"w{i}": np.asarray(w) for i, w in enumerate(es.best_weights)})
        (tmp / "state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.directory / LATEST, name + "\n")
        self._prune(name)
        return final

    def _prune(self, current: str) -> None:
        folders = sorted(p.name for p in self.directory.glob("step-*") if p.is_dir())
        for old in folders[:-self.keep]:
            if old != current:
                shutil.rmtree(self.directory / old, ignore_errors=True)


@contextlib.contextmanager
def _outside_jax_distribution():
    """JAX: no `keras.distribution` while saving. `model.save` makes a scratch optimizer
    (its attribute skip-set), whose variable a multi-process distribution would place
    with a check across processes: process 0 saving alone would wait forever."""
    saved = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if saved is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(saved)


def _jsonable(obj):
    if isinstance(obj, tuple | list):
        return [_jsonable(o) for o in obj]
    return obj


def _jsonable_numpy_state(state):
    kind, keys, pos, has_gauss, cached = state
    return [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]


def _tuple(obj):
    return tuple(_tuple(o) for o in obj) if isinstance(obj, list) else obj


def load_checkpoint(directory: str | Path, apply_backend_rng: bool = True
                    ) -> tuple[keras.Model, dict] | None:
    """The model (compiled, optimizer state included) and state of the latest checkpoint.

    Also restores the seed generators and the NumPy and Python global RNGs.
    With `apply_backend_rng=False` the backend's global RNG state (PyTorch) is
    returned as `state["backend_rng"]` instead, for `ResumableCheckpoint` to
    restore at the right moment. Returns None when `directory` holds no checkpoint.
    """
    folder = latest_checkpoint(directory)
    if folder is None:
        return None
    state = json.loads((folder / "state.json").read_text())
    model = keras.saving.load_model(folder / "model.keras")
    with np.load(folder / "seed_states.npz") as f:
        for i, v in enumerate(_seed_states(model)):
            v.assign(f[f"s{i}"])
        backend_rng = f["backend_rng"] if "backend_rng" in f.files else None
    if apply_backend_rng:
        set_global_rng_state(backend_rng)
    else:
        state["backend_rng"] = backend_rng
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype="uint32"), pos, has_gauss, cached))
    random.setstate(_tuple(state["python_rng"]))
    return model, state


def fit_resumable(model: keras.Model, x, y, *, epochs: int, batch_size: int,
                  directory: str | Path, seed: int = 0, every_n_steps: int | None = None,
                  validation_data=None, callbacks=(), early_stopping=None, verbose=0,
                  keep: int = 2, drop_remainder: bool = False,
                  on_restore=None, shard: tuple[int, int] = (0, 1),
                  write: bool = True) -> tuple[keras.Model, dict]:
    """`model.fit` with checkpoints; continues from the latest one in `directory`.

    Args:
        model: a compiled model (ignored when resuming: the checkpoint's is used).
        x, y: training arrays; shuffled per epoch with `EpochShuffledData`.
        epochs: total epochs of the run (not "more epochs").
        batch_size, seed: batching and shuffling.
        directory: checkpoint folder.
        every_n_steps: checkpoint also every N steps.
        validation_data, callbacks, verbose: as in `model.fit`.
        early_stopping: an `EarlyStopping` callback to run and checkpoint.
        drop_remainder: leave out each epoch's last, smaller batch.
        on_restore: called with the restored model before it trains (to adapt what
            a saved model does not carry, e.g. its optimizer under a distribution).
        shard, write: when several processes train one run (JAX multi-process data
            parallel): this process's `(index, count)` part of each batch
            (`EpochShuffledData`), and whether it writes the checkpoints (process 0
            only). Every process reads the same checkpoint from `directory`, so
            each restarts its shard at the checkpoint's epoch and batch.

    Under a distribution (`keras.distribution` on JAX, a `tf.distribute`
    strategy), call this inside its scope: a restored model is loaded there,
    so its variables are laid out (replicated, sharded, mirrored) as the
    original's were.

    Returns:
        `(model, history)`: the trained model (a new object when resumed) and
        the merged Keras history of this call.
    """
    resumed = load_checkpoint(directory, apply_backend_rng=False)
    state: dict = {}
    if resumed is not None:
        model, state = resumed
        if on_restore is not None:
            on_restore(model)
    epoch, start_batch = int(state.get("epoch", 0)), int(state.get("batch_in_epoch", 0))
    history: dict[str, list] = {}
    data = EpochShuffledData(x, y, batch_size, seed=seed, drop_remainder=drop_remainder,
                             shard=shard)
    if epoch >= epochs:
        return model, history

    def run(data_, first_epoch, last_epoch, start):
        ckpt = ResumableCheckpoint(directory, every_n_steps, keep=keep,
                                   early_stopping=early_stopping, initial_state=state,
                                   batches_per_epoch=data.batches_per_epoch,
                                   start_batch=start, write=write)
        cbs = [data_.callback()]
        if early_stopping is not None:
            cbs.append(early_stopping)
        cbs += [*callbacks, ckpt]
        h = model.fit(data_, epochs=last_epoch, initial_epoch=first_epoch, shuffle=False,
                      validation_data=validation_data, callbacks=cbs, verbose=verbose)
        for k, v in h.history.items():
            history.setdefault(k, []).extend(v)
        state["global_step"] = ckpt.global_step
        if early_stopping is not None:  # carry its counters into the next `fit` call
            state["early_stopping"] = {"wait": early_stopping.wait, "best": early_stopping.best,
                                       "best_epoch": early_stopping.best_epoch}
            state["es_best_weights"] = early_stopping.best_weights
        return early_stopping is not None and model.stop_training

    if start_batch:
        partial = EpochShuffledData(x, y, batch_size, seed=seed, start_batch=start_batch,
                                    drop_remainder=drop_remainder, shard=shard)
        stopped = run(partial, epoch, epoch + 1, start_batch)
        epoch += 1
        if stopped or epoch >= epochs:
            return model, history
    run(data, epoch, epochs, 0)
    return model, history
