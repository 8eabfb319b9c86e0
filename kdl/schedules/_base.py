"""Shared helpers for the schedules: a float32 step and validation."""

import math

from keras import ops

PI = math.pi


def as_step(step):
    """The optimizer's iteration counter as a float32 tensor (any shape)."""
    return ops.cast(step, "float32")


def cosine_ramp(start, end, fraction):
    """`end + (start - end) * (1 + cos(pi * fraction)) / 2`: start at 0, end at 1."""
    return end + (start - end) * 0.5 * (1.0 + ops.cos(PI * fraction))


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_ratio(name: str, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
