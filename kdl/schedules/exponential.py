"""Exponential decay, smooth or in stairs."""

import keras
from keras import ops

from kdl.registry import SCHEDULES
from kdl.schedules._base import as_step, check_positive


@SCHEDULES.register("exponential")
@keras.saving.register_keras_serializable(package="kdl")
class ExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr(step) = initial_learning_rate * decay_rate ** (step / decay_steps)`.

    Args:
        initial_learning_rate: learning rate at step 0.
        decay_steps: steps over which the rate is multiplied by `decay_rate` once.
        decay_rate: factor per `decay_steps` (e.g. 0.96).
        staircase: floor `step / decay_steps`, so the rate drops in stairs.

    Example:

    ```python
    schedule = ExponentialDecay(1e-3, decay_steps=100, decay_rate=0.9)
    ```
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False):
        check_positive("initial_learning_rate", initial_learning_rate)
        check_positive("decay_steps", decay_steps)
        check_positive("decay_rate", decay_rate)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase

    def __call__(self, step):
        exponent = as_step(step) / float(self.decay_steps)
        if self.staircase:  # a Python bool from the config, not a tensor
            exponent = ops.floor(exponent)
        return self.initial_learning_rate * ops.power(float(self.decay_rate), exponent)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}
