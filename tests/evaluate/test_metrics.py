"""Metrics, calibration, fairness and reweighing against their references:
scikit-learn, fairlearn, closed forms. Backend-independent (NumPy in, NumPy out)."""

import sys

import numpy as np
import pytest

from kdl import evaluate as ev

pytestmark = pytest.mark.once


def random_predictions(n=400, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y] * rng.uniform(0, 2, (n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_classification_metrics_equal_sklearn():
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        roc_auc_score,
    )

    y, probs = random_predictions()
    names = ["a", "b", "c", "d"]
    m = ev.classification_metrics(y, probs, names, top_confusions=3)
    ref = classification_report(y, probs.argmax(1), target_names=names, output_dict=True,
                                zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)), abs=1e-12)
    for row in m["per_class"]:
        r = ref[row["label"]]
        assert row["precision"] == pytest.approx(r["precision"], abs=1e-12)
        assert row["recall"] == pytest.approx(r["recall"], abs=1e-12)
        assert row["f1"] == pytest.approx(r["f1-score"], abs=1e-12)
        assert row["support"] == r["support"]
    assert m["macro_f1"] == pytest.approx(ref["macro avg"]["f1-score"], abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(ref["weighted avg"]["f1-score"], abs=1e-12)
    counts = confusion_matrix(y, probs.argmax(1))
    np.testing.assert_array_equal(m["confusion"], counts)
    np.testing.assert_allclose(np.asarray(m["confusion_normalized"]).sum(1), 1.0)
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"),
                                               abs=1e-12)
    off = counts - np.diag(np.diag(counts))
    top = m["top_confusions"][0]
    i, j = np.unravel_index(off.argmax(), off.shape)
    assert (top["true"], top["predicted"], top["count"]) == (names[i], names[j], off.max())
    assert [t["count"] for t in m["top_confusions"]] == sorted(off.ravel())[::-1][:3]


def test_curves_and_deltas():
    from sklearn.metrics import roc_auc_score

    y, probs = random_predictions(k=3)
    curves = ev.roc_pr_curves(y, probs)
    for c, row in enumerate(curves):
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]), abs=1e-12)
    worse = probs.copy()
    worse[y == 1, 1] = 0  # class 1 is never predicted right any more
    d = ev.per_class_deltas(ev.classification_metrics(y, probs),
                            ev.classification_metrics(y, worse))
    assert d[0]["label"] == "1" and d[0]["recall_delta"] < -0.3
    with pytest.raises(ValueError, match="NaN"):
        ev.classification_metrics(y, np.full_like(probs, np.nan))


def test_regression_metrics_equal_sklearn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    t = rng.normal(size=200)
    p = t + rng.normal(size=200) * 0.3
    m = ev.regression_metrics(t, p)
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)), abs=1e-12)
    assert m["r2"] == pytest.approx(r2_score(t, p), abs=1e-12)


def test_ece_by_hand_and_temperature_recovers_overconfidence():
    y, probs = random_predictions(n=3000, k=5, seed=2)
    # hand-computed ECE, 10 bins
    conf, right = probs.max(1), probs.argmax(1) == y
    ece = 0.0
    for lo in np.arange(10) / 10:
        m = (conf > lo) & (conf <= lo + 0.1)
        if m.any():
            ece += m.mean() * abs(right[m].mean() - conf[m].mean())
    assert ev.expected_calibration_error(y, probs, bins=10) == pytest.approx(ece, abs=1e-9)

    # labels drawn from softmax(z): calibrated; the model reports softmax(3 z)
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6000, 5)) * 1.2
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p_true])
    over = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    t = ev.fit_temperature(labels[:3000], over[:3000])
    assert t == pytest.approx(3.0, rel=0.1)
    r = ev.calibration_report(labels[:3000], over[:3000], labels[3000:], over[3000:])
    assert r["ece_after"] < r["ece_before"] / 2 and r["nll_after"] < r["nll_before"]
    with pytest.raises(ValueError, match="temperature"):
        ev.apply_temperature(over, float("nan"))


def fairness_data(seed=0, groups=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    n = 900
    shares = np.array([0.5, 0.3, 0.2])[:len(groups)]
    g = rng.choice(groups, n, p=shares / shares.sum())
    y = (rng.uniform(size=n) < np.where(g == "a", 0.6, 0.35)).astype(int)
    pred = np.where(rng.uniform(size=n) < 0.8, y, 1 - y)
    pred[(g == "b") & (rng.uniform(size=n) < 0.2)] = 0
    return y, pred, g


@pytest.mark.parametrize("groups", [("a", "b"), ("a", "b", "c")])
def test_fairness_equals_fairlearn(groups):
    from fairlearn import metrics as fl

    y, pred, g = fairness_data(groups=groups)
    r = ev.fairness_report(y, pred, g)
    kw = {"sensitive_features": g}
    assert abs(r["demographic_parity_difference"]
               - fl.demographic_parity_difference(y, pred, **kw)) < 1e-9
    assert abs(r["disparate_impact"] - fl.demographic_parity_ratio(y, pred, **kw)) < 1e-9
    assert abs(r["equal_opportunity_difference"]
               - fl.equal_opportunity_difference(y, pred, **kw)) < 1e-9
    assert abs(r["equalized_odds_difference"]
               - fl.equalized_odds_difference(y, pred, **kw)) < 1e-9
    frame = fl.MetricFrame(
        metrics={"selection_rate": fl.selection_rate, "tpr": fl.true_positive_rate,
                 "fpr": fl.false_positive_rate,
                 "accuracy": lambda a, b: float(np.mean(np.asarray(a) == np.asarray(b)))},
        y_true=y, y_pred=pred, sensitive_features=g)
    for group, row in frame.by_group.iterrows():
        for key in ("selection_rate", "tpr", "fpr", "accuracy"):
            assert abs(r["groups"][group][key] - row[key]) < 1e-9, (group, key)
    assert r["passes_80_rule"] == (r["disparate_impact"] >= 0.8)


def test_80_rule_fails_on_biased_predictions():
    g = np.array(["a"] * 50 + ["b"] * 50)
    y = np.ones(100, int)
    pred = np.r_[np.ones(50, int), np.r_[np.ones(10, int), np.zeros(40, int)]]
    r = ev.fairness_report(y, pred, g)
    assert r["disparate_impact"] == pytest.approx(0.2) and not r["passes_80_rule"]
    none = ev.fairness_report(y, np.zeros(100, int), g)  # nobody selected: ratio undefined
    assert np.isnan(none["disparate_impact"]) and not none["passes_80_rule"]


def test_reweighing_equals_closed_form():
    y, _, g = fairness_data(seed=4)
    w = ev.reweighing_weights(g, y)
    for gv in np.unique(g):
        for yv in (0, 1):
            cell = (g == gv) & (y == yv)
            expected = (g == gv).mean() * (y == yv).mean() / cell.mean()
            np.testing.assert_allclose(w[cell], expected, rtol=1e-12)
    assert w.mean() == pytest.approx(1.0)
    # in the weighted data the label no longer depends on the group
    rates = [np.sum(w[(g == gv) & (y == 1)]) / np.sum(w[g == gv]) for gv in np.unique(g)]
    np.testing.assert_allclose(rates, y.mean(), rtol=1e-12)


def test_epsilon_at_half():
    assert ev.epsilon_at_half([0, 0.1, 0.2], [0.9, 0.6, 0.3]) == pytest.approx(0.15)
    assert ev.epsilon_at_half([0, 0.1], [0.9, 0.8]) is None
    assert ev.epsilon_at_half([0, 0.1], [0.0, 0.0]) is None
    with pytest.raises(ValueError, match="NaN"):
        ev.epsilon_at_half([0, 0.1], [0.9, float("nan")])
    with pytest.raises(ValueError, match="increasing"):
        ev.epsilon_at_half([0.1, 0.0], [0.9, 0.1])


def test_permutation_importance_finds_the_one_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype("float32")
    y = (x[:, 2] > 0).astype(int)

    def predict(v):
        return np.stack([v[:, 2] <= 0, v[:, 2] > 0], 1).astype("float32")

    rows = ev.permutation_importance(predict, x, y, repeats=3,
                                     feature_names=["a", "b", "c", "d"])
    assert rows[0]["feature"] == "c" and rows[0]["importance_mean"] > 0.3
    assert all(abs(r["importance_mean"]) < 1e-12 for r in rows[1:])


def _linear_problem():
    rng = np.random.default_rng(0)
    background, x = rng.normal(size=(50, 3)), rng.normal(size=(5, 3))
    w = np.array([1.0, -2.0, 0.5])
    return background, x, w, lambda v: (np.asarray(v) @ w)[:, None]


@pytest.mark.slow  # importing shap (numba) and its first explainer take ~10 s of CPU
def test_shap_on_a_linear_function_is_exact():
    pytest.importorskip("shap", reason="the optional extra kdl[explain] is not installed")
    background, x, w, predict = _linear_problem()
    values = ev.shap_values(predict, background, x, max_evals=200)
    # exact for an additive function: w_i (x_i - E[x_i])
    np.testing.assert_allclose(values, w * (x - background.mean(0)), atol=1e-5)


def test_shap_without_the_extra_says_what_to_install(monkeypatch):
    background, x, _, predict = _linear_problem()
    monkeypatch.setitem(sys.modules, "shap", None)
    with pytest.raises(ev.MissingExtraError, match=r"kdl\[explain\]"):
        ev.shap_values(predict, background, x)
