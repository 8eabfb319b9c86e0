"""Learning-rate range test (Smith 2015; fastai's `lr_find`).

Trains a copy of the model for a few hundred steps while the learning rate
grows exponentially from `min_lr` to `max_lr`, records the loss of every
batch, and suggests the rate where the smoothed loss falls fastest (the
steepest negative slope against log-LR). The model passed in is not changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from kdl.callbacks.checkpoint import EpochShuffledData
from kdl.io import save_figure
from kdl.schedules import ExponentialDecay


@dataclass
class LRFindResult:
    """The sweep: rates, per-batch losses, smoothed losses and the suggestion."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    diverged: bool

    def to_dict(self) -> dict:
        return {"lrs": self.lrs.tolist(), "losses": self.losses.tolist(),
                "smoothed": self.smoothed.tolist(), "suggestion": self.suggestion,
                "diverged": self.diverged}


class _Recorder(keras.callbacks.Callback):
    """Per-batch losses (Keras logs the epoch's running mean; this undoes it)."""

    def __init__(self, beta: float, diverge_factor: float):
        super().__init__()
        self.beta, self.diverge_factor = beta, diverge_factor
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self._prev_mean = 0.0
        self._avg = 0.0
        self.diverged = False

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        k = batch + 1
        loss = k * mean - (k - 1) * self._prev_mean
        self._prev_mean = mean
        self.losses.append(loss)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** k)
        self.smoothed.append(smooth)
        blown = k > 10 and smooth > self.diverge_factor * min(self.smoothed)
        if not math.isfinite(loss) or blown:
            self.diverged = True
            self.model.stop_training = True


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray, skip_start: int = 5,
               skip_end: int = 3) -> float:
    """The rate at the steepest descent of the smoothed loss against log10(lr).

    The slope at step `i` is a central difference over `i - w .. i + w`,
    `w = max(1, n // 20)`: wide enough that batch-to-batch noise early in
    the sweep does not pass for a fast descent.
    """
    lrs, smoothed = np.asarray(lrs, "float64"), np.asarray(smoothed, "float64")
    n = len(smoothed)
    w = max(1, n // 20)
    lo, hi = max(skip_start, w), n - max(skip_end, w)
    if hi - lo < 1:
        raise ValueError(f"the sweep recorded {n} steps: too few to suggest a rate; "
                         "raise num_steps or max_lr")
    i = np.arange(lo, hi)
    log_lr = np.log10(lrs)
    slope = (smoothed[i + w] - smoothed[i - w]) / (log_lr[i + w] - log_lr[i - w])
    slope = np.where(np.isfinite(slope), slope, np.inf)
    return float(lrs[i[int(np.argmin(slope))]])


def lr_find(model: keras.Model, x, y, *, min_lr: float = 1e-6, max_lr: float = 1.0,
            num_steps: int = 100, batch_size: int = 32, optimizer: str | None = None,
            loss=None, beta: float = 0.9, diverge_factor: float = 4.0,
            seed: int = 0) -> LRFindResult:
    """Exponential learning-rate sweep on a copy of `model`.

    Args:
        model: a built (usually compiled) model; it is cloned, never changed.
        x, y: training arrays; batches cycle through them, shuffled by `seed`.
        min_lr, max_lr: the sweep's ends.
        num_steps: batches in the sweep (one rate each).
        batch_size: examples per batch.
        optimizer: optimizer name; default the model's optimizer class.
        loss: loss; default the model's compiled loss.
        beta: smoothing of the loss (exponential average, bias-corrected).
        diverge_factor: stop once the smoothed loss exceeds this times its minimum.
        seed: shuffling seed.

    Returns:
        An `LRFindResult`; `suggestion` is the rate where the smoothed loss
        falls fastest.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if num_steps < 10:
        raise ValueError(f"num_steps must be >= 10, got {num_steps}")
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("no loss: compile the model or pass loss=")
    if optimizer is None:
        opt_cls = type(model.optimizer) if getattr(model, "optimizer", None) else \
            keras.optimizers.SGD
        opt_config = model.optimizer.get_config() if getattr(model, "optimizer", None) else {}
    else:
        opt_cls, opt_config = type(keras.optimizers.get(optimizer)), {}
    schedule = ExponentialDecay(min_lr, decay_steps=num_steps - 1, decay_rate=max_lr / min_lr)
    opt_config = {k: v for k, v in opt_config.items()
                  if k not in ("learning_rate", "name", "use_ema", "ema_momentum",
                               "ema_overwrite_frequency", "gradient_accumulation_steps")}
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer=opt_cls(learning_rate=schedule, **opt_config), loss=loss)

    data = EpochShuffledData(x, y, batch_size, seed=seed)
    per_epoch = data.batches_per_epoch
    xs, ys = [], []
    for step in range(num_steps):  # one long epoch of `num_steps` batches
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            data.set_epoch(epoch)
        bx, by = data[i]
        xs.append(bx)
        ys.append(by)
    recorder = _Recorder(beta, diverge_factor)
    sweep = _Batches(xs, ys)
    clone.fit(sweep, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    n = len(recorder.losses)
    lrs = min_lr * (max_lr / min_lr) ** (np.arange(n) / (num_steps - 1))
    smoothed = np.asarray(recorder.smoothed)
    return LRFindResult(lrs, np.asarray(recorder.losses), smoothed,
                        suggest_lr(lrs, smoothed), recorder.diverged)


class _Batches(keras.utils.PyDataset):
    def __init__(self, xs, ys):
        super().__init__()
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i], self.ys[i]


def plot_lr_find(result: LRFindResult, path: str) -> str:
    """Loss (raw and smoothed) against the learning rate, log x-axis, to a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("plot_lr_find needs matplotlib: pip install matplotlib") from e
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="batch loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(result.suggestion, color="red", ls="--",
               label=f"suggested {result.suggestion:.2g}")
    ax.set_xscale("log")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if len(finite):
        ax.set_ylim(top=min(float(finite.max()), 4 * float(finite.min()) + 1e-12) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path
