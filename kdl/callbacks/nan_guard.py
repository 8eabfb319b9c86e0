"""Stop training on a NaN or infinite loss, and say where and why."""

import math
import threading

import keras
import numpy as np

from kdl.registry import CALLBACKS

LIKELY_CAUSES = (
    "a learning rate too high for this model/data (lower train.learning_rate)",
    "inputs with NaN/inf or not normalized (check the data)",
    "no gradient clipping (set train.clipnorm)",
    "float16 overflow under mixed_float16 (try float32 or mixed_bfloat16)",
)


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

    It costs the training loop nothing: it is `async_safe`, so on backends
    that dispatch asynchronously (JAX, PyTorch) Keras runs its batch hook in a
    worker thread and the loop never waits for a step's loss to reach the host.
    Those hooks may run a few steps late and out of order (Keras waits for all
    of them at each epoch's end); the guard keeps each epoch's finite losses
    by step, so the diagnosis names the first non-finite step all the same.
    Training stops a few steps after the bad one at most.
    """

    async_safe = True  # read by keras.callbacks.CallbackList

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._epoch = 0
        self._losses: dict[int, float] = {}  # this epoch's finite batch losses by step
        self._previous: float | None = None  # the last finite loss of an earlier epoch
        self._bad: dict | None = None  # the earliest non-finite batch and the state then

    def on_epoch_begin(self, epoch, logs=None):
        # Keras has waited for every batch hook of the previous epoch by now.
        if self._losses:
            self._previous = self._losses[max(self._losses)]
        self._losses = {}
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        with self._lock:
            if math.isfinite(loss):
                self._losses[batch] = loss
                return
            first = self._bad is None
            if first or (self._epoch, batch) < (self._bad["epoch"], self._bad["step"]):
                self._bad = {**(self._bad or {}), "epoch": self._epoch, "step": batch,
                             "loss": loss}
        if first:
            # `_model`, not `model`: on JAX the property re-attaches training state from
            # this worker thread while the loop has already donated it to its next step.
            self._model.stop_training = True

    def _describe_weights(self):
        """The layers with non-finite weights and the rate, once, on the loop's thread."""
        with self._lock:
            if self._bad is None or "layers" in self._bad:
                return
        bad_layers = [
            layer.name for layer in self.model.layers
            if any(not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))
                   for w in layer.weights)
        ]
        with self._lock:
            self._bad.update(layers=bad_layers, lr=_current_lr(self.model.optimizer))

    def on_epoch_end(self, epoch, logs=None):
        # Keras has waited for every batch hook of this epoch and attached the state.
        self._describe_weights()

    def on_train_end(self, logs=None):
        self._describe_weights()

    @property
    def diagnosis(self) -> dict | None:
        """Where and why the loss went non-finite; None while training is healthy."""
        with self._lock:
            bad = self._bad
            if bad is None:
                return None
            earlier = [s for s in self._losses if s < bad["step"]]
            last = self._losses[max(earlier)] if earlier else self._previous
        epoch, step, loss = bad["epoch"] + 1, bad["step"] + 1, bad["loss"]
        layers, lr = bad.get("layers", []), bad.get("lr")
        return {
            "epoch": epoch, "step": step, "loss": loss, "last_finite_loss": last,
            "learning_rate": lr, "non_finite_layers": layers,
            "likely_causes": list(LIKELY_CAUSES),
            "message": (
                f"loss became {loss} at epoch {epoch}, step {step} (last finite loss {last}, "
                f"learning rate {lr}; layers with non-finite weights: "
                f"{', '.join(layers) or 'none'}). Likely causes: "
                + "; ".join(LIKELY_CAUSES) + "."
            ),
        }

    def raise_if_failed(self):
        if self.diagnosis is not None:
            raise NonFiniteLossError(self.diagnosis)
