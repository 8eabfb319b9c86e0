"""What kdl's training loop costs, per backend: warm, steady-state epochs, interleaved arms.

    KERAS_BACKEND=jax python -m benchmarks.train_overhead [--repeats 5] [--epochs 2]
        [--thread-sweep]

Every arm trains its own copy of the recipe's model (same seed, data, optimizer,
warmup-cosine rate, per-variable clipnorm, validation each epoch), built and
compiled once and warmed up by one epoch before anything is timed. A repeat
runs every arm for `--epochs` epochs, in a rotating order so that the noise of a
shared machine hits each arm alike; an arm's figure for a repeat is its mean
epoch time (clocked from the first `on_epoch_begin` to the last `on_epoch_end`
callback, so it includes validation and every kdl callback). Ratios are taken
per repeat between arms of the same repeat; printed are their median and
min-max over the repeats.

Rows:
- kdl loop / bare model.fit: `kdl.training.fit` (NaN guard, early stopping that
  never triggers, per-epoch MLflow logging to a real SQLite store) against
  `model.fit` with no callbacks, both on kdl's input feed, built for each fit as
  `kdl.training.fit` builds it (a fresh `tf.data` pipeline refills its cache).
- kdl feed / NumPy arrays: the bare `model.fit` on kdl's input feed
  (`kdl.training.train_and_val`: `tf.data` on TensorFlow, `ArrayBatches` for
  in-memory data on JAX and PyTorch) against the same fit on the NumPy arrays
  (`batch_size`, `shuffle=True`). `--tf-data` feeds `tf.data` on every backend instead, as kdl did
  before `ArrayBatches`.
- kdl / plain PyTorch loop: the kdl loop against a hand-written PyTorch loop
  (the same CNN in NCHW, AdamW, the same clipping and rate per step, the same
  validation), at the same `torch.set_num_threads`.
- `--thread-sweep`, PyTorch backend only: the kdl loop at 1 intra-op thread
  against all cores (PyTorch's default); slow on a loaded machine, by design.
- MLflow epoch logging: how long the epoch-end log call holds the loop,
  synchronous (`Tracker(synchronous=True)`) against the background queue, per
  training step.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import keras
import numpy as np

from kdl import training
from kdl.backend import keras_private, torch_threads
from kdl.data import make_tf_dataset
from kdl.models import build_model
from pipelines.config import load_config
from pipelines.stages.common import load_data
from pipelines.tracking import Tracker

TARGETS = {"kdl loop / bare model.fit": 1.03, "kdl feed / NumPy arrays": 1.05,
           "kdl / plain PyTorch loop": {"torch": 1.5, "jax": 1.07, "tensorflow": 1.07}}


class Clock(keras.callbacks.Callback):
    """Epoch times: `begin` first in the callback list, `end` last."""

    def __init__(self, times: list[float], begin: bool):
        super().__init__()
        self.times, self.begin = times, begin

    def on_epoch_begin(self, epoch, logs=None):
        if self.begin:
            self.times.append(-time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        if not self.begin:
            self.times[-1] += time.perf_counter()


def clocked(fit):
    """Wrap `fit(callbacks_before, callbacks_after)`: return the list of epoch seconds."""
    def run():
        times: list[float] = []
        fit([Clock(times, True)], [Clock(times, False)])
        return times
    return run


def torch_loop(splits, cfg, batch_size: int, schedule_fn):
    """The plain-PyTorch arm: the recipe's CNN written in torch, trained by hand."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.train.seed)
    h, w, c = splits.input_shape
    p = {**cfg.model.params}
    filters, dense, dropout = (32, 64), 128, 0.25  # kdl's cnn "default" preset
    if cfg.model.name != "cnn" or cfg.model.preset != "default" or p:
        raise SystemExit("the plain-PyTorch arm mirrors model cnn, preset default only")
    layers, channels = [], c
    for f in filters:
        layers += [nn.Conv2d(channels, f, 3, padding=1, bias=False),
                   nn.BatchNorm2d(f, eps=1e-3, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2)]
        channels, h, w = f, h // 2, w // 2
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * h * w, dense), nn.ReLU(),
                        nn.Dropout(dropout), nn.Linear(dense, splits.num_outputs))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.learning_rate,
                            weight_decay=cfg.train.weight_decay, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()

    def tensors(split):
        x = torch.from_numpy(np.ascontiguousarray(split.x.transpose(0, 3, 1, 2)))
        return x, torch.from_numpy(split.y.astype("int64"))

    (xt, yt), (xv, yv) = tensors(splits.train), tensors(splits.val)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    state = {"step": 0, "val_accuracy": None}

    def epoch():
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        correct = total = 0.0
        for i in range(0, len(xt), batch_size):
            idx = order[i:i + batch_size]
            for group in opt.param_groups:
                group["lr"] = schedule_fn(state["step"])
            out = net(xt[idx])
            loss = loss_fn(out, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for param in net.parameters():  # per-variable clipnorm, as Keras's clipnorm
                nn.utils.clip_grad_norm_(param, cfg.train.clipnorm)
            opt.step()
            state["step"] += 1
            total += loss.item() * len(idx)  # running loss, as Keras's progress logs
            correct += (out.argmax(1) == yt[idx]).sum().item()
        net.eval()
        with torch.no_grad():
            state["val_accuracy"] = float((net(xv).argmax(1) == yv).float().mean())

    def run(epochs: int) -> list[float]:
        times = []
        for _ in range(epochs):
            start = time.perf_counter()
            epoch()
            times.append(time.perf_counter() - start)
        return times

    return run, state


def logging_cost(root: str, model, steps: int, repeats: int) -> dict[str, list[float]]:
    """Seconds the epoch-end MLflow call holds the loop, per training step."""
    cfg = load_config("digits_cnn", [f"tracking.uri=sqlite:///{root}/log.db",
                                     "tracking.experiment=log-cost"]).tracking
    out: dict[str, list[float]] = {"synchronous": [], "background queue": []}
    trackers = {name: Tracker(cfg, "log-cost", synchronous=name == "synchronous")
                for name in out}
    callbacks = {}
    for name, tracker in trackers.items():
        tracker.start(name, {})
        callbacks[name] = tracker.keras_callback("train/")
        callbacks[name].set_model(model)
        callbacks[name].on_epoch_end(0, {"loss": 1.0})  # the store's first write
    logs = {"loss": 0.5, "accuracy": 0.9, "val_loss": 0.6, "val_accuracy": 0.85}
    for r in range(repeats * 4):
        for name in (list(out) if r % 2 else list(out)[::-1]):
            start = time.perf_counter()
            callbacks[name].on_epoch_end(r + 1, logs)
            out[name].append((time.perf_counter() - start) / steps)
        time.sleep(0.05)  # a training epoch's worth of time for the thread to send
    for tracker in trackers.values():
        tracker.end()
    return out


def summary(values: list[float]) -> str:
    return (f"{statistics.median(values):6.3f}  [{min(values):.3f}-{max(values):.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per arm per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="digits_cnn")
    parser.add_argument("--tf-data", action="store_true",
                        help="the bare arm feeds tf.data on every backend (kdl's old feed)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="PyTorch: also time the kdl loop with jit_compile=True "
                             "(torch.compile), warmed up like every arm")
    parser.add_argument("--thread-sweep", action="store_true",
                        help="PyTorch: also time the kdl loop at 1 thread and at every core")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    backend = keras.backend.backend()

    root = tempfile.mkdtemp(prefix="kdl-bench-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # its MLflow stores
    cfg = load_config(args.recipe, [
        "train.verbose=0", f"tracking.uri=sqlite:///{root}/mlflow.db",
        "train.early_stopping.patience=100000", "tracking.experiment=bench"])
    training.prepare(cfg.train)
    threads = torch_threads(cfg.train.torch_threads)
    splits = load_data(cfg)
    batch = cfg.data.batch_size
    steps = math.ceil(len(splits.train) / batch)
    timed = dataclasses.replace(cfg.train, epochs=args.epochs)

    def fresh_model():
        keras.utils.set_random_seed(cfg.train.seed)
        model = build_model(cfg.model.name, splits.input_shape, splits.num_outputs,
                            task=splits.task, preset=cfg.model.preset, **cfg.model.params)
        training.compile_for(model, splits.task, cfg.train, steps)
        return model

    def feed():
        """kdl's input feed, built afresh for every fit as `kdl.training.fit` builds it."""
        if args.tf_data:
            return (make_tf_dataset(splits.train, batch, shuffle=True, seed=cfg.train.seed),
                    make_tf_dataset(splits.val, batch))
        return training.train_and_val(splits, batch, cfg.train.seed)

    compiled = backend == "torch" and args.torch_compile
    models = {name: fresh_model() for name in ("bare", "numpy", "kdl")}
    if compiled:
        models["kdl compiled"] = fresh_model()
        models["kdl compiled"].jit_compile = True  # the train function is made at first fit
    tracker = Tracker(cfg.tracking, "bench")
    tracker.start("kdl-loop", {})
    log_cb = tracker.keras_callback("train/")

    def bare(before, after):
        train_ds, val_ds = feed()
        models["bare"].fit(train_ds, validation_data=val_ds, epochs=args.epochs, verbose=0,
                           shuffle=False, callbacks=[*before, *after])

    def numpy_arrays(before, after):
        models["numpy"].fit(splits.train.x, splits.train.y, batch_size=batch, shuffle=True,
                            validation_data=(splits.val.x, splits.val.y), epochs=args.epochs,
                            verbose=0, callbacks=[*before, *after])

    def kdl_loop(before, after):
        training.fit(models["kdl"], splits, timed, batch, callbacks=[*before, log_cb, *after])

    schedule = keras_private.learning_rate_schedule(models["kdl"].optimizer)
    from kdl.schedules import schedule_values

    rates = schedule_values(schedule, cfg.train.epochs * steps) if callable(schedule) else None
    torch_epochs, torch_state = torch_loop(
        splits, cfg, batch, lambda s: float(rates[min(s, len(rates) - 1)]) if rates is not None
        else cfg.train.learning_rate)

    arms = {"bare": clocked(bare), "numpy": clocked(numpy_arrays), "kdl": clocked(kdl_loop),
            "torch": lambda: torch_epochs(args.epochs)}
    if compiled:
        def kdl_compiled(before, after):
            training.fit(models["kdl compiled"], splits, timed, batch,
                         callbacks=[*before, log_cb, *after])

        arms["kdl compiled"] = clocked(kdl_compiled)
    sweep = backend == "torch" and args.thread_sweep
    if sweep:
        import torch

        cores = os.cpu_count() or 1

        def at_threads(n):
            def run():
                torch.set_num_threads(n)
                try:
                    return arms["kdl"]()
                finally:
                    torch.set_num_threads(threads)
            return run

        arms.update({"kdl 1 thread": at_threads(1), f"kdl {cores} threads": at_threads(cores)})
    for run in arms.values():  # warm-up: compilation, the store's schema, caches
        run()
    times: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(statistics.mean(arms[name]()))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{k} {v[-1]:.3f} s" for k, v in times.items()), file=sys.stderr, flush=True)
    tracker.end()

    def ratios(a, b):
        return [x / y for x, y in zip(times[a], times[b], strict=True)]

    rows = [("kdl loop / bare model.fit", ratios("kdl", "bare")),
            ("kdl feed / NumPy arrays", ratios("bare", "numpy")),
            ("kdl / plain PyTorch loop", ratios("kdl", "torch"))]
    if compiled:
        rows += [("kdl torch.compile / kdl eager", ratios("kdl compiled", "kdl")),
                 ("kdl torch.compile / plain loop", ratios("kdl compiled", "torch"))]
    if sweep:
        rows.append((f"kdl 1 thread / {cores} threads",
                     ratios("kdl 1 thread", f"kdl {cores} threads")))
    train_ds = feed()[0]
    feed_name = (type(train_ds).__name__ if isinstance(train_ds, keras.utils.PyDataset)
                 else "tf.data")
    print(f"\n## train overhead: backend={backend}, {args.recipe}, feed {feed_name}, "
          f"{steps} steps/epoch, "
          f"{args.epochs} timed epochs x {args.repeats} repeats, torch threads={threads}, "
          f"{os.cpu_count()} cores")
    print(f"{'row':<32} {'median':>6}  [min-max]         target")
    for name, values in rows:
        target = TARGETS.get(name)
        target = target.get(backend) if isinstance(target, dict) else target
        verdict = "" if target is None else (
            f"<= {target:g} " + ("met" if statistics.median(values) <= target else "MISSED"))
        print(f"{name:<32} {summary(values)}  {verdict}")
    print("epoch seconds (median [min-max]): " + "; ".join(
        f"{k} {summary(v)}" for k, v in times.items()))
    print(f"plain PyTorch val_accuracy {torch_state['val_accuracy']:.3f}; kdl val_accuracy "
          f"{models['kdl'].history.history['val_accuracy'][-1]:.3f}")
    cost = logging_cost(root, models["bare"], steps, args.repeats)
    print("MLflow epoch logging, ms the loop waits per training step (median [min-max]): "
          + "; ".join(f"{k} {summary([v * 1e3 for v in vs])}" for k, vs in cost.items()))


if __name__ == "__main__":
    main()
