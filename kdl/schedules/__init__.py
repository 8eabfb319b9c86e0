"""Learning-rate schedules, registered in `SCHEDULES` by name.

Each is a serializable `keras.optimizers.schedules.LearningRateSchedule`
written with `keras.ops` only (safe under jit and graph tracing).
"""

from kdl.schedules.warmup_cosine import WarmupCosine

__all__ = ["WarmupCosine"]
