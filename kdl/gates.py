"""Comparisons for gates: a NaN or an infinity is a failure, never a pass.

`diff > tol` is False when `diff` is NaN, so a gate written as "fail if over the
limit" passes a model that outputs NaN. Every gate in kdl and the pipelines
(export parity, the compression report's targets, the prune stage's sparsity
check) compares through these functions instead of `<`/`>` on raw figures.
`pipelines/verify_bundle.py` imports numpy only, so it holds a verbatim copy of
`out_of_tolerance`; a test checks that the two stay identical.

Decided: a non-finite value fails even when the reference holds the same value
at the same place. A NaN or an infinity in a reference (the Keras model's
outputs, a golden file) means the reference itself is broken, and an app can do
nothing with such an output, so agreeing on it proves nothing.

Example:

>>> out_of_tolerance(np.array([1.0, np.nan]), np.array([1.0, np.nan]), atol=1e-3)
array([False,  True])
>>> at_most(float("nan"), 0.5)
False
"""

from __future__ import annotations

import math

import numpy as np


def out_of_tolerance(got, expected, atol: float = 0.0, rtol: float = 0.0) -> np.ndarray:
    """Where `|got - expected| <= atol + rtol * |expected|` does NOT hold, or a value is NaN/inf.

    Returns:
        A boolean array of the broadcast shape, True where the check fails.
    """
    got = np.asarray(got, dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    finite = np.isfinite(got) & np.isfinite(expected)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.abs(got - expected) <= atol + rtol * np.abs(expected)
    return ~(finite & close)


def nonfinite_count(values) -> int:
    """How many entries of `values` are NaN or +-inf."""
    return int(np.size(values) - np.count_nonzero(np.isfinite(np.asarray(values, "float64"))))


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def at_most(value, limit) -> bool:
    """`value <= limit`, False when either is missing, NaN or infinite."""
    return _finite(value, limit) and float(value) <= float(limit)


def at_least(value, limit) -> bool:
    """`value >= limit`, False when either is missing, NaN or infinite."""
    return _finite(value, limit) and float(value) >= float(limit)
