"""Cosine decay to a floor, without warmup (see `warmup_cosine` for the warmed one)."""

import keras
from keras import ops

from kdl.registry import SCHEDULES
from kdl.schedules._base import as_step, check_positive, check_ratio, cosine_ramp


@SCHEDULES.register("cosine")
@keras.saving.register_keras_serializable(package="kdl")
class CosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Half a cosine from `initial_learning_rate` down to `min_lr_ratio` of it.

    `t = min(step, decay_steps) / decay_steps`,
    `lr = initial * (r + (1 - r) * (1 + cos(pi * t)) / 2)` with `r = min_lr_ratio`;
    the rate stays at the floor after `decay_steps`.

    Args:
        initial_learning_rate: learning rate at step 0.
        decay_steps: steps from the start to the floor.
        min_lr_ratio: the floor as a fraction of `initial_learning_rate`.

    Example:

    ```python
    schedule = CosineDecay(1e-3, decay_steps=10_000, min_lr_ratio=0.01)
    ```
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int,
                 min_lr_ratio: float = 0.0):
        check_positive("initial_learning_rate", initial_learning_rate)
        check_positive("decay_steps", decay_steps)
        check_ratio("min_lr_ratio", min_lr_ratio)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step):
        t = ops.minimum(as_step(step), float(self.decay_steps)) / float(self.decay_steps)
        return self.initial_learning_rate * cosine_ramp(1.0, float(self.min_lr_ratio), t)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "min_lr_ratio": self.min_lr_ratio}
