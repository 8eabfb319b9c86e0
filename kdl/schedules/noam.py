"""The Transformer's inverse-square-root schedule with linear warmup (Noam)."""

import keras
from keras import ops

from kdl.registry import SCHEDULES
from kdl.schedules._base import as_step, check_positive


@SCHEDULES.register("noam")
@keras.saving.register_keras_serializable(package="kdl")
class NoamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`lr = scale * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)`, `s = step + 1`.

    Linear warmup for `warmup_steps`, then decay as `1 / sqrt(step)`
    ("Attention is all you need", section 5.3). The peak, at
    `s = warmup_steps`, is `scale / sqrt(d_model * warmup_steps)`. The step is
    counted from 1 so the very first update has a non-zero rate.

    Args:
        d_model: model width; the rate scales as `1 / sqrt(d_model)`.
        warmup_steps: steps of linear warmup.
        scale: overall factor (1.0 in the paper).

    Example:

    ```python
    schedule = NoamSchedule(d_model=512, warmup_steps=4000)
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    ```
    """

    def __init__(self, d_model: int, warmup_steps: int = 4000, scale: float = 1.0):
        check_positive("d_model", d_model)
        check_positive("warmup_steps", warmup_steps)
        check_positive("scale", scale)
        self.d_model = d_model
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        s = as_step(step) + 1.0
        rate = ops.minimum(ops.rsqrt(s), s * float(self.warmup_steps) ** -1.5)
        return self.scale * float(self.d_model) ** -0.5 * rate

    def get_config(self):
        return {"d_model": self.d_model, "warmup_steps": self.warmup_steps,
                "scale": self.scale}
