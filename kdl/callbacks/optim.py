"""Weight EMA, gradient accumulation, clipping and ReduceLROnPlateau, the Keras way.

Keras optimizers already implement these; kdl validates the options, names
them in one place and adds the checks Keras lacks.
"""

from __future__ import annotations

import keras

from kdl.backend import keras_private
from kdl.registry import CALLBACKS


def optimizer_options(*, ema_momentum: float | None = None,
                      ema_overwrite_every: int | None = None,
                      accumulation_steps: int | None = None,
                      clipnorm: float | None = None, clipvalue: float | None = None,
                      global_clipnorm: float | None = None) -> dict:
    """Keyword arguments for any `keras.optimizers.Optimizer` constructor.

    Args:
        ema_momentum: keep an exponential moving average of the weights,
            `avg = m * avg + (1 - m) * w` after each update (first update:
            `avg = w`); `fit` writes the average into the model at the end.
            Add `keras.callbacks.SwapEMAWeights` to validate with it.
        ema_overwrite_every: also overwrite the weights with the average every
            this many updates (None: only at the end of `fit`).
        accumulation_steps: apply the mean gradient of this many batches at
            once (effective batch = batch size x steps). Schedules see every
            batch as a step.
        clipnorm, clipvalue, global_clipnorm: gradient clipping by per-variable
            norm, by value, or by the global norm (one of them).

    Returns:
        A dict to pass as `keras.optimizers.AdamW(lr, **options)`.
    """
    opts: dict = {}
    if ema_momentum is not None:
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        opts.update(use_ema=True, ema_momentum=float(ema_momentum))
        if ema_overwrite_every is not None:
            if int(ema_overwrite_every) < 1:
                raise ValueError(f"ema_overwrite_every must be >= 1, got {ema_overwrite_every}")
            opts["ema_overwrite_frequency"] = int(ema_overwrite_every)
    elif ema_overwrite_every is not None:
        raise ValueError("ema_overwrite_every needs ema_momentum; set both or neither")
    if accumulation_steps is not None and accumulation_steps != 1:
        if int(accumulation_steps) < 2:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        opts["gradient_accumulation_steps"] = int(accumulation_steps)
    clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    set_clips = {k: v for k, v in clips.items() if v is not None}
    if len(set_clips) > 1:
        raise ValueError(f"choose one gradient clipping option, got {sorted(set_clips)}")
    for k, v in set_clips.items():
        if v <= 0:
            raise ValueError(f"{k} must be > 0, got {v}")
        opts[k] = float(v)
    return opts


CALLBACKS.register("swap_ema_weights")(keras.callbacks.SwapEMAWeights)


@CALLBACKS.register("reduce_lr_on_plateau")
class ReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras's `ReduceLROnPlateau`, failing early and clearly with a schedule.

    It sets the optimizer's learning rate, which a `LearningRateSchedule`
    owns; Keras would fail at the first reduction, possibly hours in.
    Arguments are Keras's (`monitor`, `factor`, `patience`, `min_delta`,
    `cooldown`, `min_lr`, `mode`).
    """

    def on_train_begin(self, logs=None):
        lr = keras_private.learning_rate_schedule(self.model.optimizer)
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                f"reduce_lr_on_plateau needs a constant learning rate, but the optimizer "
                f"follows the schedule {type(lr).__name__}: use schedule 'constant' or drop "
                "the callback")
        super().on_train_begin(logs)
