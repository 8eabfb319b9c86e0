"""Evaluate a trained model: how good, how sure, why, how robust, how fair.

Metrics take predictions (NumPy), so they score the Keras model and any
exported file alike; explanations and attacks differentiate the Keras model
through `kdl.backend` and run on every backend. Plots: `kdl.evaluate.plots`.

The task metrics of a split are `kdl.evaluate_split(model, split, task)`
(`kdl.training.evaluate`). Calling this package, `kdl.evaluate(model, split, task)`,
as the README once showed, still works and warns (DeprecationWarning): one name,
one thing.
"""

import sys
import types

from kdl.evaluate.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from kdl.evaluate.explain import (
    MissingExtraError,
    baseline,
    completeness_gap,
    find_last_conv,
    grad_cam,
    gradients,
    integrated_gradients,
    permutation_importance,
    shap_values,
    smoothgrad,
)
from kdl.evaluate.fairness import fairness_report, group_metrics, reweighing_weights
from kdl.evaluate.metrics import (
    classification_metrics,
    per_class_deltas,
    regression_metrics,
    roc_pr_curves,
)
from kdl.evaluate.robustness import (
    accuracy_vs_epsilon,
    epsilon_at_half,
    fgsm,
    pgd,
    robustness_report,
)

__all__ = [
    "MissingExtraError", "accuracy_vs_epsilon", "apply_temperature", "baseline",
    "calibration_report", "classification_metrics", "completeness_gap",
    "epsilon_at_half", "expected_calibration_error", "fairness_report", "fgsm",
    "find_last_conv", "fit_temperature", "grad_cam", "gradients", "group_metrics",
    "integrated_gradients", "negative_log_likelihood", "per_class_deltas", "permutation_importance",
    "pgd", "regression_metrics", "reliability_bins", "reweighing_weights", "robustness_report",
    "roc_pr_curves", "shap_values", "smoothgrad",
]


class _CallableModule(types.ModuleType):
    def __call__(self, model, split, task):
        """Deprecated: `kdl.evaluate_split(model, split, task)`."""
        import warnings

        from kdl.training import evaluate

        warnings.warn("calling kdl.evaluate(model, split, task) is deprecated: use "
                      "kdl.evaluate_split(model, split, task); kdl.evaluate is the evaluation "
                      "package", DeprecationWarning, stacklevel=2)
        return evaluate(model, split, task)


sys.modules[__name__].__class__ = _CallableModule
