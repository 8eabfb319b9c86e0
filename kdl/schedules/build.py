"""Build a registered schedule from a recipe: the peak rate, the run's length, params."""

from __future__ import annotations

import math
from typing import Any

from kdl.registry import SCHEDULES


def _steps(params: dict, key: str, steps_per_epoch: int, default: int) -> int:
    """`<key>_steps`, or `<key>_epochs` converted to steps, or `default`."""
    if f"{key}_epochs" in params:
        return max(1, int(round(params.pop(f"{key}_epochs") * steps_per_epoch)))
    return int(params.pop(f"{key}_steps", default))


def build_schedule(name: str, learning_rate: float, total_steps: int, steps_per_epoch: int,
                   params: dict[str, Any] | None = None):
    """The schedule `name` with `learning_rate` as its peak/initial rate over `total_steps`.

    Recipe params are the schedule's own arguments; lengths may be given in
    epochs (`warmup_epochs`, `step_epochs`, `decay_epochs`, `period_epochs`)
    or steps. Defaults fill the run: cosine decays over the whole run, step
    decay drops every third of it, restarts come every quarter, Noam warms up
    for 10% and peaks at `learning_rate`.
    """
    p = dict(params or {})
    total = max(int(total_steps), 1)
    if name == "warmup_cosine":
        p["warmup_steps"] = min(_steps(p, "warmup", steps_per_epoch, steps_per_epoch), total)
        return SCHEDULES.build(name, peak_lr=learning_rate, total_steps=total, **p)
    if name == "step":
        size = _steps(p, "step", steps_per_epoch, max(total // 3, 1))
        return SCHEDULES.build(name, initial_learning_rate=learning_rate, step_size=size, **p)
    if name == "exponential":
        decay = _steps(p, "decay", steps_per_epoch, total)
        p.setdefault("decay_rate", 0.01)  # 1% of the rate at the end of the run
        return SCHEDULES.build(name, initial_learning_rate=learning_rate, decay_steps=decay, **p)
    if name == "cosine":
        decay = _steps(p, "decay", steps_per_epoch, total)
        return SCHEDULES.build(name, initial_learning_rate=learning_rate, decay_steps=decay, **p)
    if name == "cosine_restarts":
        period = _steps(p, "period", steps_per_epoch, max(total // 4, 1))
        return SCHEDULES.build(name, initial_learning_rate=learning_rate, first_period=period,
                               **p)
    if name == "noam":
        warmup = _steps(p, "warmup", steps_per_epoch, max(total // 10, 1))
        d_model = int(p.pop("d_model", 512))
        scale = p.pop("scale", learning_rate * math.sqrt(d_model * warmup))  # peak = lr
        return SCHEDULES.build(name, d_model=d_model, warmup_steps=warmup, scale=scale, **p)
    if name == "one_cycle":
        return SCHEDULES.build(name, max_learning_rate=learning_rate, total_steps=max(total, 2),
                               **p)
    return SCHEDULES.build(name, **p)  # a user schedule: its params as given
