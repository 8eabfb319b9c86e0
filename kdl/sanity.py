"""Overfit-one-batch sanity check: a model that cannot memorize one batch is broken."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np


class SanityCheckFailed(AssertionError):
    """The model could not drive the loss on one batch near zero (`.result` says how far)."""

    def __init__(self, message: str, result: SanityResult):
        super().__init__(message)
        self.result = result


@dataclass
class SanityResult:
    initial_loss: float
    final_loss: float
    steps: int
    passed: bool


def overfit_one_batch(model: keras.Model, x, y, *, batch_size: int = 16, steps: int = 200,
                      learning_rate: float = 1e-2, tolerance: float = 0.05, loss=None,
                      raise_on_failure: bool = True) -> SanityResult:
    """Train a copy of `model` on its first batch; fail unless the loss falls near zero.

    A healthy model memorizes a handful of examples in a few hundred Adam
    steps. If it cannot, something is wired wrong: inputs ignored, a frozen or
    disconnected layer, labels misaligned with outputs, a wrong loss.

    Args:
        model: the model (cloned; the original is not changed).
        x, y: data; the first `batch_size` examples are the batch.
        batch_size: examples in the batch.
        steps: Adam steps on that batch.
        learning_rate: Adam's rate.
        tolerance: the final loss must be at most this.
        loss: the loss; default the model's compiled loss.
        raise_on_failure: raise `SanityCheckFailed` (else only return the result).

    Returns:
        A `SanityResult` with the loss before and after.
    """
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("no loss: compile the model or pass loss=")
    bx, by = np.asarray(x[:batch_size]), np.asarray(y[:batch_size])
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    def batch_loss() -> float:
        return float(clone.evaluate(bx, by, batch_size=len(bx), verbose=0,
                                    return_dict=True)["loss"])

    initial = batch_loss()
    reps = np.zeros(steps * len(bx), dtype="int64") + np.tile(np.arange(len(bx)), steps)
    clone.fit(bx[reps], by[reps], batch_size=len(bx), epochs=1, shuffle=False, verbose=0)
    final = batch_loss()
    result = SanityResult(initial, final, steps, bool(np.isfinite(final) and final <= tolerance))
    if not result.passed and raise_on_failure:
        raise SanityCheckFailed(
            f"overfit-one-batch failed: loss {initial:.4g} -> {final:.4g} after {steps} steps "
            f"on {len(bx)} examples (needed <= {tolerance}). The model cannot memorize one "
            "batch: check that inputs reach the output, no needed layer is frozen, labels "
            "match the outputs and the loss fits the task.", result)
    return result
