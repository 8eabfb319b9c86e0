"""Learning-rate schedules, registered in `SCHEDULES` by name.

Each is a serializable `keras.optimizers.schedules.LearningRateSchedule`
written with `keras.ops` only and no Python branching on tensors (safe under
jit and graph tracing).
"""

from kdl.schedules.build import build_schedule
from kdl.schedules.cosine import CosineDecay
from kdl.schedules.cosine_restarts import CosineWarmRestarts
from kdl.schedules.exponential import ExponentialDecay
from kdl.schedules.noam import NoamSchedule
from kdl.schedules.one_cycle import OneCycle
from kdl.schedules.plot import plot_schedule, schedule_values
from kdl.schedules.step import StepDecay
from kdl.schedules.warmup_cosine import WarmupCosine

__all__ = [
    "CosineDecay",
    "CosineWarmRestarts",
    "ExponentialDecay",
    "NoamSchedule",
    "OneCycle",
    "StepDecay",
    "WarmupCosine",
    "build_schedule",
    "plot_schedule",
    "schedule_values",
]
