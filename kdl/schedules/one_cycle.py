"""One-cycle policy (Smith 2018), with PyTorch `OneCycleLR`'s two-phase cosine semantics."""

import keras
from keras import ops

from kdl.registry import SCHEDULES
from kdl.schedules._base import as_step, check_positive, cosine_ramp


@SCHEDULES.register("one_cycle")
@keras.saving.register_keras_serializable(package="kdl")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine up from `max/div_factor` to `max`, then cosine down to a tiny floor.

    With `initial = max_learning_rate / div_factor`,
    `floor = initial / final_div_factor` and `p = pct_start * total_steps - 1`:
    for `step <= p`, `lr = cos_ramp(initial -> max, step / p)`; after it,
    `lr = cos_ramp(max -> floor, (step - p) / (total_steps - 1 - p))`, where
    `cos_ramp(a -> b, f) = b + (a - b) * (1 + cos(pi * f)) / 2`. The step is
    clipped to `total_steps - 1`. Matches `torch.optim.lr_scheduler.OneCycleLR`
    (`anneal_strategy="cos"`, `three_phase=False`).

    Args:
        max_learning_rate: the peak rate.
        total_steps: length of the cycle in optimizer steps.
        pct_start: fraction of the cycle spent rising.
        div_factor: `max_learning_rate / div_factor` is the starting rate.
        final_div_factor: the final rate is the starting rate divided by this.

    Example:

    ```python
    schedule = OneCycle(0.01, total_steps=epochs * steps_per_epoch)
    ```
    """

    def __init__(self, max_learning_rate: float, total_steps: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        check_positive("max_learning_rate", max_learning_rate)
        if total_steps < 2:
            raise ValueError(f"total_steps must be >= 2, got {total_steps}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
        if pct_start * total_steps - 1 <= 0 or pct_start * total_steps >= total_steps:
            raise ValueError(
                f"pct_start={pct_start} with total_steps={total_steps} leaves a phase with no "
                "steps; raise total_steps or move pct_start toward 0.5")
        check_positive("div_factor", div_factor)
        check_positive("final_div_factor", final_div_factor)
        self.max_learning_rate = max_learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor

    def __call__(self, step):
        peak = float(self.max_learning_rate)
        initial = peak / self.div_factor
        floor = initial / self.final_div_factor
        p = float(self.pct_start * self.total_steps - 1)
        last = float(self.total_steps - 1)
        s = ops.minimum(as_step(step), last)
        rising = cosine_ramp(initial, peak, ops.minimum(s / p, 1.0))
        falling = cosine_ramp(peak, floor, ops.maximum(s - p, 0.0) / (last - p))
        return ops.where(s <= p, rising, falling)

    def get_config(self):
        return {"max_learning_rate": self.max_learning_rate, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}
