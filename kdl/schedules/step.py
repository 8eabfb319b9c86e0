"""Step decay: multiply the learning rate by `gamma` every `step_size` steps."""

import keras
from keras import ops

from kdl.registry import SCHEDULES
from kdl.schedules._base import as_step, check_positive


@SCHEDULES.register("step")
@keras.saving.register_keras_serializable(package="kdl")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr(step) = initial_learning_rate * gamma ** floor(step / step_size)`.

    Args:
        initial_learning_rate: learning rate at step 0.
        step_size: optimizer steps between two drops.
        gamma: factor applied at each drop (0.1 divides by ten).

    Example:

    ```python
    schedule = StepDecay(0.1, step_size=1000, gamma=0.5)
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    ```
    """

    def __init__(self, initial_learning_rate: float, step_size: int, gamma: float = 0.1):
        check_positive("initial_learning_rate", initial_learning_rate)
        check_positive("step_size", step_size)
        check_positive("gamma", gamma)
        self.initial_learning_rate = initial_learning_rate
        self.step_size = step_size
        self.gamma = gamma

    def __call__(self, step):
        drops = ops.floor(as_step(step) / float(self.step_size))
        return self.initial_learning_rate * ops.power(float(self.gamma), drops)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "step_size": self.step_size, "gamma": self.gamma}
