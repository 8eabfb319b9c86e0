"""Pruning schedules with tensorflow-model-optimization's exact semantics.

A schedule is a pure function of the pruning step: `schedule(step)` returns
`(should_prune, sparsity)`. Masks are recomputed only at steps where
`should_prune` is true: `begin_step <= step <= end_step` (or `end_step == -1`
for `ConstantSparsity`, "prune till the end") and `(step - begin_step)` a
multiple of `frequency`. Arithmetic is done in float32 like tfmot's: the pruning
steps are the same as `tfmot.sparsity.keras.ConstantSparsity`/`PolynomialDecay`
and the sparsities agree within 1e-6 (the tests check this against tfmot
itself, at every step).

Step convention (tfmot's): the n-th optimizer step of pruning uses step n
(the first batch is step 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_steps(begin_step: int, end_step: int, frequency: int, allow_forever: bool) -> None:
    if not isinstance(begin_step, int | np.integer) or begin_step < 0:
        raise ValueError(f"begin_step must be an integer >= 0, got {begin_step!r}")
    if end_step == -1 and not allow_forever:
        raise ValueError("end_step cannot be -1 for polynomial_decay: give the step where "
                         "the final sparsity is reached")
    if end_step != -1:
        if not isinstance(end_step, int | np.integer) or end_step < 0:
            raise ValueError(f"end_step must be -1 or an integer >= 0, got {end_step!r}")
        if end_step < begin_step:
            raise ValueError(f"end_step ({end_step}) is before begin_step ({begin_step}): "
                             "set end_step >= begin_step (or -1 to prune till the end)")
    if not isinstance(frequency, int | np.integer) or frequency <= 0:
        raise ValueError(f"frequency must be an integer > 0, got {frequency!r}")


def _check_sparsity(value: float, name: str) -> None:
    if not isinstance(value, int | float | np.floating) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r} "
                         "(0.8 means 80% of the weights are zero)")


class PruningSchedule:
    """Base class: `__call__(step) -> (should_prune, sparsity)`."""

    begin_step: int
    end_step: int
    frequency: int

    def should_prune(self, step: int) -> bool:
        in_range = step >= self.begin_step and (step <= self.end_step or self.end_step < 0)
        return bool(in_range and (step - self.begin_step) % self.frequency == 0)

    def sparsity(self, step: int) -> float:
        raise NotImplementedError

    @property
    def final_sparsity(self) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        return self.should_prune(step), self.sparsity(step)

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError


class ConstantSparsity(PruningSchedule):
    """The same sparsity at every pruning step in `[begin_step, end_step]`.

    Args:
        target_sparsity: fraction of zero weights, in [0, 1).
        begin_step: first step that prunes.
        end_step: last step that may prune; -1 prunes till the end of training.
        frequency: prune every `frequency` steps from `begin_step`.

    Example:

    ```python
    should_prune, sparsity = ConstantSparsity(0.8, begin_step=0, frequency=10)(20)
    ```
    """

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1,
                 frequency: int = 100):
        _check_steps(begin_step, end_step, frequency, allow_forever=True)
        _check_sparsity(target_sparsity, "target_sparsity")
        self.target_sparsity = target_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def sparsity(self, step: int) -> float:
        return float(np.float32(self.target_sparsity))

    @property
    def final_sparsity(self) -> float:
        return float(self.target_sparsity)

    def get_config(self) -> dict[str, Any]:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


class PolynomialDecay(PruningSchedule):
    """Sparsity rising from `initial_sparsity` to `final_sparsity` (Zhu & Gupta, 2017).

    `s(step) = final + (initial - final) * (1 - p) ** power` with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`, in float32.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first step that prunes.
        end_step: last step that prunes (must be >= `begin_step`, not -1).
        power: exponent of the decay (3 in the paper and in tfmot).
        frequency: prune every `frequency` steps from `begin_step`.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int,
                 end_step: int, power: float = 3, frequency: int = 100):
        _check_steps(begin_step, end_step, frequency, allow_forever=False)
        _check_sparsity(initial_sparsity, "initial_sparsity")
        _check_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = initial_sparsity
        self._final_sparsity = final_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    @property
    def final_sparsity(self) -> float:
        return float(self._final_sparsity)

    def sparsity(self, step: int) -> float:
        f32 = np.float32
        span = self.end_step - self.begin_step
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = f32(step - self.begin_step) / f32(span)
        p = np.minimum(f32(1.0), np.maximum(f32(0.0), ratio))
        if np.isnan(p):  # begin_step == end_step: tfmot's 0/0 gives nan; the clip keeps 1.0
            p = f32(1.0)
        delta = f32(self.initial_sparsity - self._final_sparsity)
        s = delta * np.power(f32(1.0) - p, f32(self.power)) + f32(self._final_sparsity)
        return float(f32(s))

    def get_config(self) -> dict[str, Any]:
        return {"initial_sparsity": self.initial_sparsity,
                "final_sparsity": self._final_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "power": self.power, "frequency": self.frequency}


SCHEDULES = {"constant": ConstantSparsity, "polynomial_decay": PolynomialDecay}


def make_schedule(name: str, **kwargs: Any) -> PruningSchedule:
    """Build a schedule by name: `"constant"` or `"polynomial_decay"`."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown pruning schedule {name!r}; use one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
