"""Supervised training with the craft built in.

`prepare` fixes seeds and the precision policy before a model is built;
`compile_for` gives the optimizer (warmup-cosine schedule, clipping), loss and
metrics; `fit` trains with early stopping (best weights restored) and a
non-finite-loss guard; `evaluate` scores a split with NumPy, the same way on
every backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kdl.backend import distribution, enable_determinism, resolve_precision, torch_threads
from kdl.callbacks import TerminateOnNonFinite, optimizer_options
from kdl.callbacks.checkpoint import fit_resumable
from kdl.config import TrainConfig
from kdl.data import DataSplits, Split, make_tf_dataset, model_input
from kdl.data.augment import one_hot_targets
from kdl.optimizers import GroupedOptimizer
from kdl.schedules import build_schedule


def prepare(cfg: TrainConfig) -> str:
    """Seed every RNG, ask for deterministic ops, set the global dtype policy (and
    PyTorch's CPU threads on that backend); return the policy name. Two runs with the
    same seed on the same machine, backend and package versions give the same weights
    (tests/test_reproducibility.py)."""
    if keras.backend.backend() == "torch":
        torch_threads(cfg.torch_threads)
    keras.utils.set_random_seed(cfg.seed)
    enable_determinism()
    policy = resolve_precision(cfg.precision)
    keras.config.set_dtype_policy(policy)
    return policy


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    """The configured schedule over the whole run, or a constant rate."""
    if cfg.schedule == "constant":
        return cfg.learning_rate
    return build_schedule(cfg.schedule, cfg.learning_rate, cfg.epochs * steps_per_epoch,
                          steps_per_epoch, cfg.schedule_params)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(cfg, steps_per_epoch)
    clip = {"clipnorm": cfg.clipnorm, "clipvalue": cfg.clipvalue,
            "global_clipnorm": cfg.global_clipnorm}
    clip = {k: v for k, v in clip.items() if v is not None}
    if "clipnorm" in clip and "global_clipnorm" in clip:
        raise ValueError("set train.clipnorm or train.global_clipnorm, not both")
    clip.update(optimizer_options(ema_momentum=cfg.ema_momentum,
                                  accumulation_steps=cfg.accumulation_steps))
    if cfg.beta_1 is not None:
        if cfg.optimizer not in ("adam", "adamw"):
            raise ValueError(f"train.beta_1 applies to adam and adamw, not {cfg.optimizer}")
        clip["beta_1"] = cfg.beta_1
    if cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **clip)
    elif cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(lr, **clip)
    elif cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **clip)
    else:
        opt = keras.optimizers.RMSprop(lr, **clip)
    if cfg.param_groups:  # discriminative rates: one copy of the optimizer per group
        opt = GroupedOptimizer(opt, [dataclasses.asdict(g) for g in cfg.param_groups])
    if distribution.active() is not None:
        distribution.adapt_optimizer(opt)
    return opt


def loss_and_metrics(task: str, soft_labels: bool = False) -> tuple[str, list[str]]:
    """Soft labels: one-hot or mixed targets (CutMix/MixUp augmentation)."""
    if task == "classification":
        return ("categorical_crossentropy" if soft_labels
                else "sparse_categorical_crossentropy"), ["accuracy"]
    return "mse", ["mae"]


def compile_for(model: keras.Model, task: str, cfg: TrainConfig, steps_per_epoch: int,
                soft_labels: bool = False) -> None:
    loss, metrics = loss_and_metrics(task, soft_labels)
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss, metrics=metrics)


@dataclass
class TrainResult:
    """What `fit` did: the Keras history and how training ended."""

    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    diagnosis: dict[str, Any] | None = None  # set when the loss became NaN/inf
    extra: dict[str, Any] = field(default_factory=dict)


def soft_labels(splits: DataSplits) -> bool:
    """True when the training targets are one-hot/mixed (CutMix or MixUp augmentation)."""
    return bool(splits.augment is not None and splits.augment.soft_labels)


def in_line_feed(splits: DataSplits) -> bool:
    """True when training feeds `ArrayBatches` rather than `tf.data`: on JAX and PyTorch,
    for in-memory splits with no augmentation (`kdl.data.feed` says why). TensorFlow keeps
    `tf.data`, which runs inside its graph."""
    return (keras.backend.backend() in ("jax", "torch") and splits.augment is None
            and not hasattr(splits.train, "dataset"))


def train_and_val(splits: DataSplits, batch_size: int, seed: int, drop_remainder: bool = False,
                  shard: tuple[int, int] = (0, 1)):
    """The training batches (shuffled, seeded, augmented) and the validation ones (or None):
    `tf.data`, or `ArrayBatches` where `in_line_feed`; with soft labels the validation
    targets are one-hot too, for the same loss. `shard`: this process's part of each
    in-line batch (`ArrayBatches`); a `tf.data` feed is sharded by Keras."""
    has_val = len(splits.val) >= (batch_size if drop_remainder else 1)
    if in_line_feed(splits):
        from kdl.data.feed import ArrayBatches

        return (ArrayBatches(splits.train, batch_size, shuffle=True, seed=seed,
                             drop_remainder=drop_remainder, shard=shard),
                ArrayBatches(splits.val, batch_size, drop_remainder=drop_remainder,
                             shard=shard) if has_val else None)
    train_ds = make_tf_dataset(splits.train, batch_size, shuffle=True, seed=seed,
                               drop_remainder=drop_remainder, augment=splits.augment)
    val_ds = (make_tf_dataset(splits.val, batch_size, drop_remainder=drop_remainder)
              if has_val else None)
    if val_ds is not None and soft_labels(splits):
        val_ds = one_hot_targets(val_ds, len(splits.label_names))
    return train_ds, val_ds


def reweighed(splits: DataSplits, column: str) -> DataSplits:
    """`splits` whose training examples carry Kamiran-Calders weights
    P(group) P(label) / P(group, label) of the side column `column`."""
    import dataclasses

    from kdl.evaluate.fairness import reweighing_weights

    train = splits.train
    weights = reweighing_weights(train.column(column), train.y)
    return dataclasses.replace(splits, train=dataclasses.replace(train, weight=weights))


def fit(model: keras.Model, splits: DataSplits, cfg: TrainConfig, batch_size: int,
        callbacks: list[keras.callbacks.Callback] = (), checkpoint_dir=None) -> TrainResult:
    """Train a compiled model on `splits.train`, validating on `splits.val`.

    Early stopping restores the best weights. `cfg.reweigh` weights the training
    examples (`reweighed`). A non-finite loss stops training
    and is reported in `TrainResult.diagnosis` (the caller decides how to fail).
    With `checkpoint_dir` (and `cfg.checkpoint`), training checkpoints there and
    continues from its latest checkpoint; the trained model, a new object when
    resumed, is `TrainResult.extra["model"]`.
    """
    dist = distribution.active()
    on = dist or distribution.Distributed()  # one device: no engine, one process
    drop = on.drop_remainder  # JAX: every batch splits evenly over the devices
    if cfg.reweigh:
        splits = reweighed(splits, cfg.reweigh)
    train_ds, val_ds = train_and_val(splits, batch_size, cfg.seed, drop, on.input_shard)
    if dist is not None:
        head = splits.train.head(batch_size)
        distribution.keep_epoch_order(model, (model_input(head.x), head.y))
    guard = TerminateOnNonFinite()
    cbs: list[keras.callbacks.Callback] = [guard]
    stopper = None
    es = cfg.early_stopping
    if es.enabled:
        if val_ds is None and es.monitor.startswith("val_"):
            raise ValueError(f"early stopping monitors {es.monitor!r} but there is no "
                             "validation split: set data.val_fraction > 0")
        stopper = keras.callbacks.EarlyStopping(
            monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta,
            restore_best_weights=True, verbose=0)
        cbs.append(stopper)
    cbs.extend(callbacks)
    if checkpoint_dir is not None and cfg.checkpoint:
        with on.shard_feed(val_ds) as val_ds:  # several processes: each feeds its shard
            model, hist = fit_resumable(
                model, splits.train.x, splits.train.y, epochs=cfg.epochs,
                batch_size=batch_size, directory=checkpoint_dir, seed=cfg.seed,
                every_n_steps=cfg.checkpoint_every_steps, validation_data=val_ds,
                callbacks=[c for c in cbs if c is not stopper], early_stopping=stopper,
                verbose=cfg.verbose, drop_remainder=drop,
                on_restore=None if dist is None else lambda m: distribution.adapt_optimizer(
                    m.optimizer),
                shard=on.input_shard, write=on.is_chief)
    else:
        in_line = isinstance(train_ds, keras.utils.PyDataset)  # else Keras shards tf.data
        with on.shard_feed(val_ds) if in_line else contextlib.nullcontext(val_ds) as val_ds:
            hist = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                             callbacks=cbs, shuffle=False,  # train_ds shuffles itself, seeded
                             verbose=cfg.verbose).history
    hist = {k: [float(v) for v in vals] for k, vals in hist.items()}
    epochs_run = len(hist.get("loss", []))
    stopped = stopper is not None and stopper.stopped_epoch > 0
    best = None
    if stopper is not None and stopper.best_epoch is not None and epochs_run:
        best = int(stopper.best_epoch) + 1
    return TrainResult(hist, epochs_run, best, stopped, guard.diagnosis, {"model": model})


def fit_phases(model: keras.Model, backbone: keras.Model, splits: DataSplits, cfg: TrainConfig,
               batch_size: int, callbacks: list[keras.callbacks.Callback] = ()) -> TrainResult:
    """Transfer learning: `cfg.transfer.phases` through `kdl.transfer.fine_tune`.

    Each phase compiles the configured optimizer (clipping, EMA, accumulation)
    at the phase's constant rate, per-group rates from its `param_groups`.
    No early stopping across phases: each phase runs its epochs.
    """
    import math

    from kdl.transfer import Phase, fine_tune

    steps = math.ceil(len(splits.train) / batch_size)

    def optimizer(lr):
        return make_optimizer(dataclasses.replace(cfg, learning_rate=lr, schedule="constant",
                                                  param_groups=[]), steps)

    phases = [Phase(p.epochs, p.learning_rate, p.top_n, list(p.names),
                    [dataclasses.asdict(g) for g in p.param_groups])
              for p in cfg.transfer.phases]
    train_ds, val_ds = train_and_val(splits, batch_size, cfg.seed)
    guard = TerminateOnNonFinite()
    loss, metrics = loss_and_metrics(splits.task, soft_labels(splits))
    report = fine_tune(model, backbone, phases, train_ds, loss=loss, metrics=metrics,
                       optimizer=optimizer, validation_data=val_ds,
                       callbacks=[guard, *callbacks], verbose=cfg.verbose)
    hist: dict[str, list[float]] = {}
    for phase in report:
        for k, vals in phase["history"].items():
            hist.setdefault(k, []).extend(vals)
    extra = {"model": model, "phases": [{"trainable": p["trainable"],
                                         "learning_rate": p["learning_rate"]} for p in report]}
    return TrainResult(hist, len(hist.get("loss", [])), None, False, guard.diagnosis, extra)


def predict(model: keras.Model, x, batch_size: int = 256) -> np.ndarray:
    """Predictions as float32; `x` is an array or a tuple of arrays (several inputs)."""
    return np.asarray(model.predict(model_input(x), batch_size=batch_size, verbose=0),
                      dtype="float32")


def sequence_scores(y_true: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """Token accuracy and whole-sequence accuracy of predicted ids `(n, length)`."""
    if y_true.shape != tokens.shape:
        raise ValueError(f"predicted ids {tokens.shape} and targets {y_true.shape} differ")
    right = tokens == y_true
    return {"token_accuracy": float(right.mean()),
            "sequence_accuracy": float(right.all(axis=-1).mean())}


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Task metrics from predictions: accuracy/loss for classifiers, mse/mae/r2 otherwise.

    Classifier targets `(n, length)` (a class per position, teacher-forced
    sequences) give the per-position `accuracy` and `loss`, and the
    `sequence_accuracy` of all positions right.
    """
    if task == "classification" and y_true.ndim > 1:
        flat = score(task, y_true.reshape(-1), y_pred.reshape(-1, y_pred.shape[-1]))
        seq = sequence_scores(y_true, y_pred.argmax(-1))
        return {**flat, "sequence_accuracy": seq["sequence_accuracy"]}
    if task == "classification":
        p = np.clip(y_pred[np.arange(len(y_true)), y_true], 1e-7, 1.0)
        return {"accuracy": float(np.mean(np.argmax(y_pred, -1) == y_true)),
                "loss": float(-np.mean(np.log(p)))}
    y_true = y_true.reshape(y_pred.shape)
    err = y_pred - y_true
    ss_tot = float(np.sum((y_true - y_true.mean(axis=0)) ** 2))
    return {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
            "r2": float(1 - np.sum(err ** 2) / ss_tot) if ss_tot > 0 else float("nan")}


def evaluate(model: keras.Model, split: Split, task: str) -> dict[str, float]:
    return score(task, split.y, predict(model, split.x))


def evaluate_decoding(model: keras.Model, split: Split, decode, start_id: int
                      ) -> dict[str, float]:
    """Autoregressive scores of a seq2seq model: `decode(model, source, start_id, steps)`
    predicts the targets from the source alone (no teacher forcing)."""
    tokens = decode(model, split.x[0], start_id=start_id, steps=split.y.shape[1])
    return {f"greedy_{k}": v for k, v in sequence_scores(split.y, tokens).items()}


def primary_metric(task: str) -> tuple[str, str]:
    """The metric a task is judged by, and whether higher ("max") or lower is better."""
    return ("accuracy", "max") if task == "classification" else ("mse", "min")
