"""Stop training on a NaN or infinite loss, and say where and why."""

import math

import keras
import numpy as np

from kdl.registry import CALLBACKS


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss. `diagnosis` holds the details."""

    def __init__(self, diagnosis: dict):
        self.diagnosis = diagnosis
        super().__init__(diagnosis["message"])


def _current_lr(optimizer) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


@CALLBACKS.register("terminate_on_non_finite")
class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss and records a diagnosis.

    Unlike `keras.callbacks.TerminateOnNaN` it keeps what is needed to explain
    the failure: epoch, step, the last finite loss, the learning rate, and the
    layers whose weights are no longer finite. After `fit` returns, check
    `callback.diagnosis` (None if training was healthy) or call
    `callback.raise_if_failed()`.
    """

    def __init__(self):
        super().__init__()
        self.diagnosis = None
        self._epoch = 0
        self._last_finite = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if math.isfinite(loss):
            self._last_finite = loss
            return
        bad_layers = [
            layer.name for layer in self.model.layers
            if any(not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))
                   for w in layer.weights)
        ]
        lr = _current_lr(self.model.optimizer)
        causes = ["a learning rate too high for this model/data (lower train.learning_rate)",
                  "inputs with NaN/inf or not normalized (check the data)",
                  "no gradient clipping (set train.clipnorm)",
                  "float16 overflow under mixed_float16 (try float32 or mixed_bfloat16)"]
        self.diagnosis = {
            "epoch": self._epoch + 1, "step": batch + 1, "loss": loss,
            "last_finite_loss": self._last_finite, "learning_rate": lr,
            "non_finite_layers": bad_layers, "likely_causes": causes,
            "message": (
                f"loss became {loss} at epoch {self._epoch + 1}, step {batch + 1} "
                f"(last finite loss {self._last_finite}, learning rate {lr}; layers with "
                f"non-finite weights: {', '.join(bad_layers) or 'none'}). Likely causes: "
                + "; ".join(causes) + "."
            ),
        }
        self.model.stop_training = True

    def raise_if_failed(self):
        if self.diagnosis is not None:
            raise NonFiniteLossError(self.diagnosis)
