"""Group fairness of a binary classifier, and Kamiran–Calders reweighing.

Definitions follow fairlearn (tests check them against it to 1e-9):
selection rate = share predicted positive; demographic parity difference =
max - min selection rate over groups; disparate impact = min / max selection
rate (fairlearn's `demographic_parity_ratio`; the "80% rule" asks >= 0.8);
equal opportunity difference = max - min true-positive rate; equalized odds
difference = the larger of the TPR and FPR differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FOUR_FIFTHS = 0.8


def _binary(name: str, v: np.ndarray, positive) -> np.ndarray:
    v = np.asarray(v).reshape(-1)
    return (v == positive).astype("int64")


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
                  positive: int = 1) -> dict[str, dict[str, float]]:
    """Per group: count, accuracy, selection rate, TPR and FPR (scikit-learn).

    Args:
        y_true, y_pred: labels and predicted labels `(n,)`.
        groups: the sensitive attribute `(n,)` (any hashable values).
        positive: the label counted as the favourable outcome.

    Returns:
        `{str(group): {"count", "accuracy", "selection_rate", "tpr", "fpr"}}`;
        a rate with no examples to divide by is NaN.
    """
    from sklearn.metrics import confusion_matrix

    t, p = _binary("y_true", y_true, positive), _binary("y_pred", y_pred, positive)
    groups = np.asarray(groups).reshape(-1)
    if not len(t) == len(p) == len(groups):
        raise ValueError(f"y_true ({len(t)}), y_pred ({len(p)}) and groups ({len(groups)}) "
                         "must have the same length")
    out = {}
    for g in np.unique(groups):
        m = groups == g
        tn, fp, fn, tp = confusion_matrix(t[m], p[m], labels=[0, 1]).ravel()
        n = int(m.sum())
        out[str(g)] = {
            "count": n,
            "accuracy": (tp + tn) / n,
            "selection_rate": (tp + fp) / n,
            "tpr": tp / (tp + fn) if tp + fn else float("nan"),
            "fpr": fp / (fp + tn) if fp + tn else float("nan"),
        }
        out[str(g)] = {k: (v if k == "count" else float(v)) for k, v in out[str(g)].items()}
    return out


def _spread(per_group: dict[str, dict[str, float]], key: str) -> float:
    values = np.array([g[key] for g in per_group.values()], "float64")
    return float(values.max() - values.min())


def fairness_report(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
                    positive: int = 1) -> dict[str, Any]:
    """Per-group metrics and the between-group differences (see module docstring)."""
    per_group = group_metrics(y_true, y_pred, groups, positive)
    rates = np.array([g["selection_rate"] for g in per_group.values()], "float64")
    ratio = float(rates.min() / rates.max()) if rates.max() > 0 else float("nan")
    tpr, fpr = _spread(per_group, "tpr"), _spread(per_group, "fpr")
    return {
        "groups": per_group,
        "demographic_parity_difference": _spread(per_group, "selection_rate"),
        "disparate_impact": ratio,
        "passes_80_rule": bool(np.isfinite(ratio) and ratio >= FOUR_FIFTHS),
        "equal_opportunity_difference": tpr,
        "equalized_odds_difference": float(max(tpr, fpr)),
        "accuracy_difference": _spread(per_group, "accuracy"),
    }


def reweighing_weights(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Kamiran & Calders (2012) reweighing: w(g, y) = P(g) P(y) / P(g, y).

    Each example gets the weight of its (group, label) cell, so that in the
    weighted data the label is independent of the group. The weights average
    to 1 over the examples. Pass them as `sample_weight` to training.
    """
    groups = np.asarray(groups).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(groups) != len(labels) or not len(groups):
        raise ValueError(f"groups ({len(groups)}) and labels ({len(labels)}) must be "
                         "non-empty and of the same length")
    _, g = np.unique(groups, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    n = len(g)
    joint = np.zeros((g.max() + 1, y.max() + 1))
    np.add.at(joint, (g, y), 1.0)
    joint /= n
    pg, py = joint.sum(axis=1), joint.sum(axis=0)
    return (pg[g] * py[y] / joint[g, y]).astype("float64")
