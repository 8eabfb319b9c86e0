"""Learning-rate schedules by name (`SCHEDULES`), all serializable and jit-safe.

Each is a `keras.optimizers.schedules.LearningRateSchedule` written with
`keras.ops` only and no Python branching on tensors, so it runs inside a
jitted train step on every backend.
"""

from kdl.schedules.cosine import CosineDecay
from kdl.schedules.cosine_restarts import CosineWarmRestarts
from kdl.schedules.exponential import ExponentialDecay
from kdl.schedules.noam import NoamSchedule
from kdl.schedules.one_cycle import OneCycle
from kdl.schedules.plot import plot_schedule, schedule_values
from kdl.schedules.step import StepDecay

__all__ = [
    "CosineDecay",
    "CosineWarmRestarts",
    "ExponentialDecay",
    "NoamSchedule",
    "OneCycle",
    "StepDecay",
    "plot_schedule",
    "schedule_values",
]
