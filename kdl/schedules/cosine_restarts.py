"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017)."""

import math

import keras
from keras import ops

from kdl.registry import SCHEDULES
from kdl.schedules._base import as_step, check_positive, check_ratio, cosine_ramp


@SCHEDULES.register("cosine_restarts")
@keras.saving.register_keras_serializable(package="kdl")
class CosineWarmRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decays that restart at the peak; periods grow by `period_mult`.

    Period `i` lasts `first_period * period_mult**i` steps and starts at
    `initial_learning_rate * peak_mult**i`. Within a period, at fraction `t`
    of it, `lr = peak_i * (r + (1 - r) * (1 + cos(pi * t)) / 2)` with
    `r = min_lr_ratio`.

    Args:
        initial_learning_rate: peak of the first period.
        first_period: length of the first period in steps.
        period_mult: growth of each period's length (1 keeps them equal; SGDR uses 2).
        peak_mult: factor on the peak at each restart (1 keeps it).
        min_lr_ratio: floor of each period as a fraction of its peak.

    Example:

    ```python
    schedule = CosineWarmRestarts(0.1, first_period=500, period_mult=2.0)
    ```
    """

    def __init__(self, initial_learning_rate: float, first_period: int,
                 period_mult: float = 1.0, peak_mult: float = 1.0, min_lr_ratio: float = 0.0):
        check_positive("initial_learning_rate", initial_learning_rate)
        check_positive("first_period", first_period)
        if period_mult < 1.0:
            raise ValueError(f"period_mult must be >= 1 (periods never shrink), got {period_mult}")
        check_positive("peak_mult", peak_mult)
        check_ratio("min_lr_ratio", min_lr_ratio)
        self.initial_learning_rate = initial_learning_rate
        self.first_period = first_period
        self.period_mult = period_mult
        self.peak_mult = peak_mult
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step):
        frac = as_step(step) / float(self.first_period)
        m = float(self.period_mult)
        if m == 1.0:  # config constant: equal periods
            i = ops.floor(frac)
            t = frac - i
        else:
            # Periods 0..i-1 span (m**i - 1) / (m - 1) first-periods.
            i = ops.floor(ops.log(1.0 + frac * (m - 1.0)) / math.log(m))
            done = (ops.power(m, i) - 1.0) / (m - 1.0)
            t = (frac - done) / ops.power(m, i)
            t = ops.clip(t, 0.0, 1.0)  # guards float rounding at a period boundary
        peak = self.initial_learning_rate * ops.power(float(self.peak_mult), i)
        return peak * cosine_ramp(1.0, float(self.min_lr_ratio), t)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_period": self.first_period, "period_mult": self.period_mult,
                "peak_mult": self.peak_mult, "min_lr_ratio": self.min_lr_ratio}
