"""Per-layer gradient norms with vanishing/exploding flags, every N steps."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np

from kdl.backend.grads import compute_gradients

log = logging.getLogger(__name__)


def layer_of(path: str) -> str:
    """The layer part of a variable path: `"mlp/dense_0/kernel"` -> `"mlp/dense_0"`."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def gradient_norms(grads: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """L2 norm of the gradient of each layer (all its variables together)."""
    sq: dict[str, float] = {}
    for path, g in grads:
        key = layer_of(path)
        sq[key] = sq.get(key, 0.0) + float(np.sum(np.square(g, dtype="float64")))
    return {k: float(np.sqrt(v)) for k, v in sq.items()}


class GradientStats(keras.callbacks.Callback):
    """Every `every_n_steps` steps, the gradient norm of each layer on a probe batch.

    Not in `CALLBACKS` (it needs a probe batch): recipes use
    `train.grad_stats_every`. `model.fit` does not expose its own gradients,
    so the callback computes them on a fixed probe batch (`kdl.backend.grads.compute_gradients`, in
    inference mode: no dropout, no BatchNorm update, the run's state is not
    touched). A layer whose gradient norm is below `vanishing` is flagged
    vanishing; above `exploding`, exploding; flags are logged as warnings.

    Args:
        x, y: the probe batch (a few dozen examples is plenty).
        every_n_steps: how often, in optimizer steps (batches).
        vanishing: norm below which a layer is flagged vanishing.
        exploding: norm above which a layer is flagged exploding.
        loss: `fn(y_true, y_pred)` or a loss name; None uses the compiled loss.
        log_fn: optional `fn(metrics: dict, step: int)` (e.g. an MLflow
            tracker's `log_metrics`) that receives
            `grad_norm/<layer>`, `grad_norm/global`, `grad_vanishing_layers` and
            `grad_exploding_layers` at each probe.

    Attributes:
        history: one dict per probe: `step`, `loss`, `norms` (layer -> norm),
            `global_norm`, `vanishing` and `exploding` (lists of layer names).

    Example:

    ```python
    stats = GradientStats(x_val[:64], y_val[:64], every_n_steps=50)
    model.fit(x, y, callbacks=[stats])
    stats.history[-1]["norms"]
    ```
    """

    def __init__(self, x, y, every_n_steps: int = 100, vanishing: float = 1e-7,
                 exploding: float = 1e3, loss: Callable | str | None = None,
                 log_fn: Callable[[dict, int], None] | None = None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0 <= vanishing < exploding:
            raise ValueError(f"need 0 <= vanishing < exploding, got {vanishing}, {exploding}")
        self.x, self.y = x, y
        self.every_n_steps = every_n_steps
        self.vanishing = vanishing
        self.exploding = exploding
        self.loss = loss
        self.log_fn = log_fn
        self.history: list[dict] = []
        self._step = 0

    def on_train_begin(self, logs=None):
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_n_steps == 0:
            self.probe(self._step)

    def probe(self, step: int) -> dict:
        """Compute, record and log the statistics now."""
        loss, grads = compute_gradients(self.model, self.x, self.y, self.loss)
        norms = gradient_norms(grads)
        total = float(np.sqrt(sum(n * n for n in norms.values())))
        record = {
            "step": step, "loss": loss, "norms": norms, "global_norm": total,
            "vanishing": [k for k, n in norms.items() if n < self.vanishing],
            "exploding": [k for k, n in norms.items() if n > self.exploding or not np.isfinite(n)],
        }
        self.history.append(record)
        for kind in ("vanishing", "exploding"):
            if record[kind]:
                log.warning("step %d: %s gradients in %s", step, kind, ", ".join(record[kind]))
        if self.log_fn is not None:
            metrics = {f"grad_norm/{k}": n for k, n in norms.items()}
            metrics.update({"grad_norm/global": total,
                            "grad_vanishing_layers": len(record["vanishing"]),
                            "grad_exploding_layers": len(record["exploding"])})
            self.log_fn(metrics, step)
        return record
