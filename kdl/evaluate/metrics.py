"""Classification and regression metrics from predictions, through scikit-learn.

Everything here takes NumPy arrays (labels, class probabilities, regression
outputs), so the same functions score the Keras model and every exported file
(LiteRT, ONNX) run on the same inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _labels(n_classes: int, label_names: list[str] | None) -> list[str]:
    if label_names is None:
        return [str(i) for i in range(n_classes)]
    if len(label_names) != n_classes:
        raise ValueError(f"{len(label_names)} label names for {n_classes} classes")
    return [str(n) for n in label_names]


def _check_probs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1).astype("int64")
    probs = np.asarray(probs, "float64")
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probabilities must be (n, classes) for {len(y_true)} labels, "
                         f"got shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or inf")
    return y_true, probs


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           label_names: list[str] | None = None,
                           top_confusions: int = 5) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion and top confusions.

    Args:
        y_true: integer labels `(n,)`.
        probs: class scores `(n, classes)` (probabilities; the argmax is the prediction).
        label_names: one name per class.
        top_confusions: how many of the most frequent (true, predicted) mistakes to list.

    Returns:
        A JSON-ready dict: `accuracy`, `macro_f1`, `weighted_f1`, `macro_roc_auc`
        (one-vs-rest; None when a class is absent from `y_true`), `per_class`
        (label, precision, recall, f1, support), `confusion` (counts [true][pred]),
        `confusion_normalized` (rows sum to 1; an absent class's row is 0) and
        `top_confusions` (true, predicted, count, share of the true class).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true, probs = _check_probs(y_true, probs)
    k = probs.shape[1]
    names = _labels(k, label_names)
    classes = list(range(k))
    y_pred = probs.argmax(-1)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                 zero_division=0)
    counts = confusion_matrix(y_true, y_pred, labels=classes)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    mistakes = [(counts[i, j], i, j) for i in classes for j in classes
                if i != j and counts[i, j] > 0]
    mistakes.sort(key=lambda t: (-t[0], t[1], t[2]))
    auc = None
    if len(np.unique(y_true)) == k and k > 1:
        scores = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
        auc = float(roc_auc_score(y_true, scores[:, 1] if k == 2 else scores,
                                  multi_class="ovr", average="macro", labels=classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro",
                                   zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted",
                                      zero_division=0)),
        "macro_roc_auc": auc,
        "per_class": [{"label": names[i], "precision": float(p[i]), "recall": float(r[i]),
                       "f1": float(f[i]), "support": int(s[i])} for i in classes],
        "confusion": counts.tolist(),
        "confusion_normalized": normalized.tolist(),
        "top_confusions": [{"true": names[i], "predicted": names[j], "count": int(c),
                            "share": float(c / rows[i, 0])}
                           for c, i, j in mistakes[:top_confusions]],
    }


def roc_pr_curves(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """One-vs-rest ROC and precision-recall curves per class (for plots).

    Returns one dict per class with `fpr`, `tpr`, `roc_auc`, `precision`,
    `recall`, `average_precision` (arrays as NumPy); a class absent from
    `y_true` gets None curves.
    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y_true, probs = _check_probs(y_true, probs)
    out = []
    for c in range(probs.shape[1]):
        positive = (y_true == c).astype(int)
        if positive.sum() == 0 or positive.sum() == len(positive):
            out.append({"fpr": None, "tpr": None, "roc_auc": None, "precision": None,
                        "recall": None, "average_precision": None})
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        precision, recall, _ = precision_recall_curve(positive, probs[:, c])
        out.append({"fpr": fpr, "tpr": tpr, "roc_auc": float(auc(fpr, tpr)),
                    "precision": precision, "recall": recall,
                    "average_precision": float(average_precision_score(positive, probs[:, c]))})
    return out


def per_class_deltas(reference: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-class F1/recall/precision of `other` minus `reference` (two
    `classification_metrics` results over the same labels), worst F1 first."""
    rows = []
    for a, b in zip(reference["per_class"], other["per_class"], strict=True):
        rows.append({"label": a["label"],
                     **{f"{m}_delta": b[m] - a[m] for m in ("precision", "recall", "f1")}})
    return sorted(rows, key=lambda r: r["f1_delta"])


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² (scikit-learn; averaged uniformly over several targets)."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    y_pred = np.asarray(y_pred, "float64")
    y_true = np.asarray(y_true, "float64").reshape(y_pred.shape)
    if not np.isfinite(y_pred).all():
        raise ValueError("predictions contain NaN or inf")
    y_true2, y_pred2 = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    return {"mae": float(mean_absolute_error(y_true2, y_pred2)),
            "rmse": float(root_mean_squared_error(y_true2, y_pred2)),
            "r2": float(r2_score(y_true2, y_pred2))}
