"""Calibration: expected calibration error, reliability bins, temperature scaling.

Models here end in a softmax, so temperature scaling works on log-probabilities
(equal to the logits up to a per-example constant, which the softmax ignores):
`softmax(log(p) / T)`. One scalar `T` is fitted on the validation split by
minimizing the negative log-likelihood; `T > 1` softens an over-confident model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-12


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Confidence (top-class probability) in `bins` equal-width bins over [0, 1].

    Returns `edges` (bins + 1), and per bin `count`, `confidence` (mean
    top-class probability) and `accuracy` (share right); empty bins hold NaN
    for the means and 0 for the count.
    """
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, "float64")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = probs.max(axis=-1)
    right = (probs.argmax(axis=-1) == y_true).astype("float64")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, conf, bins) / count
        accuracy = np.bincount(which, right, bins) / count
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE: sum over bins of (share of examples) * |accuracy - mean confidence|."""
    b = reliability_bins(y_true, probs, bins)
    used = b["count"] > 0
    weight = b["count"][used] / b["count"].sum()
    return float(np.sum(weight * np.abs(b["accuracy"][used] - b["confidence"][used])))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(probs) / temperature)`, row-wise."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    z = np.log(np.clip(np.asarray(probs, "float64"), _EPS, 1.0)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean -log p(true class) (scikit-learn's `log_loss` over all classes)."""
    from sklearn.metrics import log_loss

    probs = np.asarray(probs, "float64")
    return float(log_loss(np.asarray(y_true).reshape(-1), probs,
                          labels=list(range(probs.shape[1]))))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature that minimizes the NLL of `apply_temperature(probs, T)`.

    A bounded 1-D search over log T (SciPy). Fit on validation data, apply on test.
    """
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true).reshape(-1).astype("int64")
    logp = np.log(np.clip(np.asarray(probs, "float64"), _EPS, 1.0))
    if not np.isfinite(logp).all():
        raise ValueError("probabilities contain NaN")
    rows = np.arange(len(y_true))

    def nll(log_t):
        z = logp / np.exp(log_t)
        z = z - z.max(axis=-1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=-1)) - z[rows, y_true]))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


def calibration_report(y_val: np.ndarray, probs_val: np.ndarray, y_test: np.ndarray,
                       probs_test: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Temperature fitted on validation; ECE and NLL on test before and after."""
    t = fit_temperature(y_val, probs_val)
    scaled = apply_temperature(probs_test, t)
    return {"temperature": t, "bins": bins,
            "ece_before": expected_calibration_error(y_test, probs_test, bins),
            "ece_after": expected_calibration_error(y_test, scaled, bins),
            "nll_before": negative_log_likelihood(y_test, probs_test),
            "nll_after": negative_log_likelihood(y_test, scaled)}
