"""Linear warmup, then cosine decay to a floor."""

import math

import keras
from keras import ops

from kdl.registry import SCHEDULES


@SCHEDULES.register("warmup_cosine")
@keras.saving.register_keras_serializable(package="kdl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_lr`, then cosine decay to `peak_lr * min_lr_ratio`.

    lr(s) = peak * s / warmup                                 for s < warmup
    lr(s) = floor + (peak - floor) * (1 + cos(pi * p)) / 2    after, with
            p = min(1, (s - warmup) / (total - warmup))

    Branch-free (`ops.where`), so it traces under jit and tf.function.

    Args:
        peak_lr: the rate reached at the end of warmup.
        total_steps: steps of the whole run (warmup included).
        warmup_steps: steps of linear warmup (0 for none).
        min_lr_ratio: the final rate as a fraction of `peak_lr`.

    Example:

    ```python
    lr = WarmupCosine(peak_lr=1e-3, total_steps=1000, warmup_steps=100)
    optimizer = keras.optimizers.AdamW(learning_rate=lr)
    ```
    """

    def __init__(self, peak_lr, total_steps, warmup_steps=0, min_lr_ratio=0.0):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                             f"({total_steps}) and total_steps >= 1")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        floor = self.peak_lr * self.min_lr_ratio
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = floor + (self.peak_lr - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        linear = self.peak_lr * step / warmup
        return ops.where(step < self.warmup_steps, linear, cosine)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio}
