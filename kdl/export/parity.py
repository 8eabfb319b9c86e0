"""Compare an exported file's outputs with the Keras model's, against thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdl.gates import at_least, at_most, nonfinite_count, out_of_tolerance
from kdl.training import primary_metric, score


class ParityError(AssertionError):
    """One or more exported formats missed their verification thresholds."""


def compare(reference: np.ndarray, outputs: np.ndarray, y_true: np.ndarray, task: str,
            thresholds: dict[str, float]) -> dict[str, Any]:
    """Measure `outputs` (an exported file's) against `reference` (the Keras model's).

    Returns max/mean abs difference, top-1 agreement (classifiers), the task
    metric of both and its drop, and `failures`: one sentence per missed
    threshold (`max_abs_diff`, `min_top1_agreement`, `max_metric_drop`).
    A NaN or infinity in `outputs` or in `reference` is a failure of its own
    (see `kdl.gates`), and makes every figure it touches fail its threshold.
    """
    if outputs.shape != reference.shape:
        return {"failures": [f"output shape {outputs.shape} differs from the Keras "
                             f"model's {reference.shape}"]}
    diff = np.abs(outputs.astype("float64") - reference.astype("float64"))
    name, mode = primary_metric(task)
    ref_metric = score(task, y_true, reference)[name]
    metric = score(task, y_true, outputs)[name]
    drop = ref_metric - metric if mode == "max" else metric - ref_metric
    report: dict[str, Any] = {
        "max_abs_diff": float(diff.max(initial=0.0)),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "metric": name, "value": metric, "keras_value": ref_metric, "metric_drop": drop,
    }
    if task == "classification":
        report["top1_agreement"] = float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))
    failures = []
    for what, arr in (("the exported file's outputs", outputs),
                      ("the Keras model's reference outputs", reference)):
        bad = nonfinite_count(arr)
        report[f"nonfinite_{'outputs' if arr is outputs else 'reference'}"] = bad
        if bad:
            failures.append(f"{bad} of {arr.size} values of {what} are NaN/inf")
    if report["nonfinite_outputs"] or report["nonfinite_reference"]:
        report["max_abs_diff"] = float("nan")
        if task == "classification":  # argmax of a NaN row is meaningless
            report["top1_agreement"] = float("nan")
    limit = thresholds.get("max_abs_diff")
    if limit is not None and out_of_tolerance(diff, 0.0, atol=limit).any():
        failures.append(f"max abs diff {report['max_abs_diff']:.3g} > {limit:.3g}")
    limit = thresholds.get("min_top1_agreement")
    if limit is not None and not at_least(report.get("top1_agreement", 1.0), limit):
        failures.append(f"top-1 agreement {report['top1_agreement']:.4f} < {limit:.4f}")
    limit = thresholds.get("max_metric_drop")
    if limit is not None and not at_most(drop, limit):
        failures.append(f"{name} drop {drop:.4f} > {limit:.4f}")
    report["failures"] = failures
    report["passed"] = not failures
    return report
