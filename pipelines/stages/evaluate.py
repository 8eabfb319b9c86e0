"""The evaluate stage: how good, how sure, why, how robust and how fair the model is.

Scores the trained Keras model, the compressed Keras models of the run and every
exported file that runs here (LiteRT, ONNX, SavedModel) on the test split, per
class, so a user sees which classes quantization hurts. Calibration (ECE,
temperature fitted on validation), explanations, robustness and fairness come
from `kdl.evaluate` on the trained Keras model. Writes `evaluation/` (report.md,
evaluation.json, PNGs) into the run, logs `eval/...` metrics and the folder to
MLflow, and stores the temperature in `calibration.json` and the bundle contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kdl import evaluate as ev
from kdl.data.core import is_multi_input
from kdl.evaluate import plots
from kdl.export import float32_model
from kdl.export.formats import FORMATS, load_runner
from kdl.io import atomic_write_json, atomic_write_text
from kdl.registry import MODELS
from pipelines.stages.common import Context, StageFailed, load_keras, load_trained

# Keras models of a run, beside the trained one, as rows of the per-format table.
KERAS_ROWS = {"keras": "model.keras", "keras_pruned": "compressed/model_pruned.keras",
              "keras_qat": "compressed/model_qat.keras"}


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=256, verbose=0), "float32")


def predictors(run_dir: Path, cfg, model: keras.Model) -> dict[str, Any]:
    """Name -> `x -> outputs` for the trained model, the run's compressed Keras models
    and each exported file that runs here (per `evaluate.formats`)."""
    out: dict[str, Any] = {"keras": lambda x: _predict(model, x)}
    for name, rel in list(KERAS_ROWS.items())[1:]:
        if (run_dir / rel).is_file():
            m = float32_model(load_keras(run_dir / rel, ""))
            out[name] = lambda x, m=m: _predict(m, x)
    report_path = run_dir / "export" / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        wanted = cfg.evaluate.formats
        for fmt, r in report["formats"].items():
            # every exported file runs here; the keras one is the trained model's row
            if FORMATS[fmt].runtime != "keras" and (wanted is None or fmt in wanted):
                out[fmt] = load_runner(fmt, run_dir / "export" / r["file"])
    return out


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]


class Report:
    """evaluation.json (`data`), report.md (`lines`), figures and MLflow metrics."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.data: dict[str, Any] = {"notes": []}
        self.lines: list[str] = []
        self.metrics: dict[str, float] = {}

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"[evaluate] {text}")

    def metric(self, name: str, value: Any) -> None:
        if isinstance(value, bool | int | float | np.floating) and value is not None:
            self.metrics[f"eval/{name}"] = float(value)

    def figure(self, title: str, path: Path) -> None:
        self.lines += [f"![{title}]({path.name})", ""]


def classification(rep: Report, preds: dict[str, np.ndarray], splits, keras_val: np.ndarray,
                   cfg) -> np.ndarray:
    y, names = splits.test.y.reshape(-1), splits.label_names
    per = {k: ev.classification_metrics(y, p, names) for k, p in preds.items()}
    rep.data["formats"] = per
    base = per["keras"]
    rows = []
    for k, m in per.items():
        rows.append([k, m["accuracy"], m["macro_f1"], m["macro_roc_auc"],
                     m["accuracy"] - base["accuracy"]])
        rep.metric(f"{k}/accuracy", m["accuracy"])
        rep.metric(f"{k}/macro_f1", m["macro_f1"])
        for c in m["per_class"]:
            rep.metric(f"{k}/f1/{c['label']}", c["f1"])
            rep.metric(f"{k}/recall/{c['label']}", c["recall"])
    rep.lines += ["## Classification (test split)", ""]
    rep.lines += _table(["model", "accuracy", "macro F1", "macro ROC AUC", "accuracy delta"],
                        rows) + [""]
    rep.lines += ["Per class (Keras model):", ""]
    rep.lines += _table(["class", "precision", "recall", "F1", "support"],
                        [[c["label"], c["precision"], c["recall"], c["f1"], c["support"]]
                         for c in base["per_class"]]) + [""]
    if len(per) > 1:
        deltas = {k: ev.per_class_deltas(base, m) for k, m in per.items() if k != "keras"}
        rep.data["per_class_deltas"] = deltas
        rep.lines += ["Per-class F1 change vs the Keras model (worst first):", ""]
        for k, d in deltas.items():
            worst = ", ".join(f"{r['label']} {r['f1_delta']:+.4f}" for r in d[:5])
            rep.lines.append(f"- {k}: {worst}")
        rep.lines.append("")
        rep.figure("per-class F1", plots.per_class_formats(per, rep.out_dir / "per_class_f1.png"))
    rep.lines += ["Top confusions (Keras): " + (", ".join(
        f"{t['true']}→{t['predicted']} ×{t['count']}" for t in base["top_confusions"])
        or "none"), ""]
    rep.figure("confusion", plots.confusion(base["confusion"], base["confusion_normalized"],
                                            names, rep.out_dir / "confusion.png"))
    rep.figure("ROC and PR", plots.roc_pr(ev.roc_pr_curves(y, preds["keras"]), names,
                                          rep.out_dir / "roc_pr.png"))

    cal = ev.calibration_report(splits.val.y, keras_val, y, preds["keras"],
                                cfg.evaluate.calibration_bins)
    rep.data["calibration"] = cal
    for k in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after"):
        rep.metric(f"calibration/{k}", cal[k])
    t = cal["temperature"]
    rep.lines += ["## Calibration", "",
                  f"Temperature fitted on the validation split: **T = {t:.4f}** "
                  "(apply as softmax(log(p) / T); stored in calibration.json and the bundle "
                  "contract as `calibration.temperature`).", ""]
    rep.lines += _table(["on test", "ECE", "NLL"],
                        [["before", cal["ece_before"], cal["nll_before"]],
                         ["after", cal["ece_after"], cal["nll_after"]]]) + [""]
    bins = cfg.evaluate.calibration_bins
    rep.figure("reliability", plots.reliability(
        ev.reliability_bins(y, preds["keras"], bins),
        ev.reliability_bins(y, ev.apply_temperature(preds["keras"], t), bins),
        (cal["ece_before"], cal["ece_after"]), t, rep.out_dir / "reliability.png"))
    return preds["keras"].argmax(-1)


def regression(rep: Report, preds: dict[str, np.ndarray], splits) -> None:
    per = {k: ev.regression_metrics(splits.test.y, p) for k, p in preds.items()}
    rep.data["formats"] = per
    for k, m in per.items():
        for name, v in m.items():
            rep.metric(f"{k}/{name}", v)
    rep.lines += ["## Regression (test split)", ""]
    rep.lines += _table(["model", "MAE", "RMSE", "R²"],
                        [[k, m["mae"], m["rmse"], m["r2"]] for k, m in per.items()]) + [""]
    rep.figure("residuals", plots.residuals(splits.test.y, preds["keras"],
                                            rep.out_dir / "residuals.png"))


def misclassified(rep: Report, splits, probs: np.ndarray, n: int) -> None:
    y, x = splits.test.y.reshape(-1), splits.test.x
    wrong = np.flatnonzero(probs.argmax(-1) != y)[:n]
    if not len(wrong):
        rep.note("no misclassified test example")
        return
    names = splits.label_names
    titles = [f"{names[y[i]]}→{names[probs[i].argmax()]} ({probs[i].max():.2f})" for i in wrong]
    rep.lines += ["## Misclassified test examples", "", "Caption: true → predicted "
                  "(confidence).", ""]
    rep.figure("misclassified", plots.image_grid(x[wrong], titles,
                                                 rep.out_dir / "misclassified.png"))


def explain_images(rep: Report, model, splits, probs: np.ndarray, e) -> None:
    n = min(e.explain_examples, len(splits.test))
    x, y = splits.test.x[:n], splits.test.y.reshape(-1)[:n]
    target = probs[:n].argmax(-1)
    maps = {"gradient": ev.gradients(model, x, target),
            "SmoothGrad": ev.smoothgrad(model, x, target, samples=e.smoothgrad_samples)}
    gaps = {}
    for kind in e.ig_baselines:
        attr = ev.integrated_gradients(model, x, target, baseline_kind=kind, steps=e.ig_steps)
        maps[f"IG ({kind})"] = attr
        gaps[kind] = float(ev.completeness_gap(model, x, attr, target,
                                               baseline_kind=kind).max())
        rep.metric(f"explain/ig_completeness_gap_{kind}", gaps[kind])
    try:
        layer = e.gradcam_layer or ev.find_last_conv(model)
        maps[f"Grad-CAM ({layer})"] = ev.grad_cam(model, x, target, layer=layer)
    except ValueError as err:
        rep.note(f"Grad-CAM skipped: {err}")
    names = splits.label_names
    captions = [f"{names[a]} (pred {names[b]})" for a, b in zip(y, target, strict=True)]
    rep.data["explanations"] = {"examples": n, "methods": list(maps), "ig_steps": e.ig_steps,
                                "ig_completeness_gap_max": gaps}
    rep.lines += ["## Explanations", "",
                  f"{n} test examples, explaining the predicted class's probability. "
                  f"Integrated Gradients with {e.ig_steps} steps; completeness gap "
                  "|sum(attributions) − (f(x) − f(baseline))| / |f(x) − f(baseline)|, worst "
                  "example: " + ", ".join(f"{k} {v:.2%}" for k, v in gaps.items()) + ".", ""]
    rep.figure("attributions", plots.attribution_grid(x, maps, captions,
                                                      rep.out_dir / "explanations.png"))


def explain_table(rep: Report, model, predict, splits, e) -> None:
    feature_names = splits.info.get("feature_names") or [
        f"x{i}" for i in range(splits.test.x.shape[1])]
    x, y = splits.test.x, splits.test.y.reshape(-1)
    task = splits.task
    series, errors = {}, {}
    perm = ev.permutation_importance(predict, x, y, task, repeats=e.permutation_repeats,
                                     feature_names=feature_names)
    by_name = {r["feature"]: r for r in perm}
    series["permutation (score drop)"] = [by_name[f]["importance_mean"] for f in feature_names]
    errors["permutation (score drop)"] = [by_name[f]["importance_std"] for f in feature_names]
    n = min(max(e.explain_examples, 1) * 16, len(x))  # tabular IG is cheap
    target = predict(x[:n]).reshape(n, -1).argmax(-1) if task == "classification" else None
    ig = ev.integrated_gradients(model, x[:n], target, steps=e.ig_steps)
    series["IG mean |attribution|"] = list(np.abs(ig).mean(0))
    shap_note = None
    if e.shap_examples:
        try:
            k = min(e.shap_examples, len(x))
            sv = ev.shap_values(predict, splits.train.x[:100], x[:k],
                                None if target is None else target[:k])
            series["SHAP mean |value|"] = list(np.abs(sv).mean(0))
        except ev.MissingExtraError as err:
            shap_note = f"SHAP skipped: {err}"
            rep.note(shap_note)
    rep.data["feature_importance"] = {
        "features": feature_names, **{k: [float(v) for v in vals] for k, vals in series.items()},
        "permutation_std": errors["permutation (score drop)"]}
    for f, v in zip(feature_names, series["permutation (score drop)"], strict=True):
        rep.metric(f"explain/permutation/{f}", v)
    rep.lines += ["## Feature importance", ""]
    rep.lines += _table(["feature", *series], [[f, *(series[k][i] for k in series)]
                                                for i, f in enumerate(feature_names)]) + [""]
    if shap_note:
        rep.lines += [f"_{shap_note}_", ""]
    rep.figure("feature importance", plots.feature_bars(
        series, feature_names, rep.out_dir / "feature_importance.png",
        "feature importance (test)", errors))


def robustness(rep: Report, model, splits, e) -> None:
    n = min(e.robustness_examples, len(splits.test))
    r = ev.robustness_report(model, splits.test.x[:n], splits.test.y[:n], e.epsilons,
                             pgd_steps=e.pgd_steps, noise_sigmas=e.noise_sigmas,
                             seed=0)
    rep.data["robustness"] = r
    for k in ("fgsm_eps_at_half", "pgd_eps_at_half", "noise_sigma_at_half"):
        rep.metric(f"robustness/{k}", r[k])
    for eps, a, b in zip(r["epsilons"], r["fgsm"], r["pgd"], strict=True):
        rep.metric(f"robustness/fgsm_accuracy_eps_{eps:g}", a)
        rep.metric(f"robustness/pgd_accuracy_eps_{eps:g}", b)
    rep.lines += ["## Robustness", "",
                  f"{n} test examples; epsilon in the model's (standardized) input units, "
                  f"L-inf; PGD {r['pgd_steps']} steps.", ""]
    rep.lines += _table(["epsilon", "FGSM accuracy", "PGD accuracy"],
                        [[a, b, c] for a, b, c in zip(r["epsilons"], r["fgsm"], r["pgd"],
                                                      strict=True)]) + [""]
    rep.lines += [f"Accuracy halves at: FGSM eps {_fmt(r['fgsm_eps_at_half'], 3)}, "
                  f"PGD eps {_fmt(r['pgd_eps_at_half'], 3)}, Gaussian noise sigma "
                  f"{_fmt(r['noise_sigma_at_half'], 3)} ('-': not within the tested range).",
                  ""]
    rep.figure("robustness", plots.robustness(r, rep.out_dir / "robustness.png"))


def fairness(rep: Report, splits, preds: dict[str, np.ndarray], e) -> None:
    groups = splits.test.column(e.sensitive)
    y = splits.test.y.reshape(-1)
    per = {k: ev.fairness_report(y, p.argmax(-1), groups, e.positive_label)
           for k, p in preds.items()}
    rep.data["fairness"] = {"sensitive": e.sensitive, "positive_label": e.positive_label,
                            **per}
    keys = ("disparate_impact", "demographic_parity_difference",
            "equal_opportunity_difference", "equalized_odds_difference")
    for k, r in per.items():
        for key in keys:
            rep.metric(f"fairness/{k}/{key}", r[key])
    r = per["keras"]
    rep.lines += [f"## Fairness (sensitive column `{e.sensitive}`, favourable label "
                  f"{splits.label_names[e.positive_label]!r})", ""]
    rep.lines += _table(["group", "count", "accuracy", "selection rate", "TPR", "FPR"],
                        [[g, m["count"], m["accuracy"], m["selection_rate"], m["tpr"], m["fpr"]]
                         for g, m in r["groups"].items()]) + [""]
    rep.lines += _table(["model", "disparate impact", "80% rule", "DP difference",
                         "equal opportunity diff", "equalized odds diff"],
                        [[k, m["disparate_impact"], "pass" if m["passes_80_rule"] else "FAIL",
                          m["demographic_parity_difference"], m["equal_opportunity_difference"],
                          m["equalized_odds_difference"]] for k, m in per.items()]) + [""]
    rep.figure("fairness", plots.fairness(r["groups"], rep.out_dir / "fairness.png"))


def store_temperature(run_dir: Path, temperature: float, tracker) -> str | None:
    """calibration.json in the run; `calibration.temperature` in the bundle contract
    (then the bundle is replayed again by the standalone checker)."""
    from pipelines.verify_bundle import verify_bundle

    record = {"temperature": temperature, "fitted_on": "validation split",
              "apply": "softmax(log(p) / temperature) on the model's probabilities"}
    atomic_write_json(run_dir / "calibration.json", record)
    contract_path = run_dir / "bundle" / "contract.json"
    if not contract_path.is_file():
        return None
    contract = json.loads(contract_path.read_text())
    contract["calibration"] = record
    atomic_write_text(contract_path, json.dumps(contract, indent=1))
    code, lines = verify_bundle(contract_path.parent)
    if code != 0:
        raise StageFailed("the bundle does not verify after adding the calibration "
                          "temperature:\n  " + "\n  ".join(lines))
    tracker.log_artifact(contract_path, "evaluate/bundle")
    return str(contract_path)


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    e = cfg.evaluate
    trained = load_trained(ctx)
    splits = ctx.splits()
    out_dir = run_dir / "evaluation"
    out_dir.mkdir(exist_ok=True)
    rep = Report(out_dir)
    rep.lines += [f"# Evaluation: {cfg.name} / {run_dir.name}", ""]
    if MODELS.get(cfg.model.name).spec.custom_training or is_multi_input(splits.test.x):
        rep.note(f"model {cfg.model.name!r} is trained by its own losses or takes several "
                 "inputs: per-class metrics, calibration, explanations and attacks need one "
                 "input and class scores; nothing to evaluate")
        return _finish(rep, run_dir, tracker, {})
    model = float32_model(trained)
    preds = {k: np.asarray(f(splits.test.x), "float32").reshape(len(splits.test), -1)
             for k, f in predictors(run_dir, cfg, model).items()}
    summary: dict[str, Any] = {"models": len(preds)}
    images = splits.test.x.ndim == 4
    if splits.task == "classification":
        keras_val = _predict(model, splits.val.x)
        classification(rep, preds, splits, keras_val, cfg)
        t = rep.data["calibration"]["temperature"]
        summary.update(accuracy=rep.data["formats"]["keras"]["accuracy"], temperature=t,
                       ece_before=rep.data["calibration"]["ece_before"],
                       ece_after=rep.data["calibration"]["ece_after"])
        if store_temperature(run_dir, t, tracker):
            summary["bundle_temperature"] = "stored"
        if images and e.misclassified:
            misclassified(rep, splits, preds["keras"], e.misclassified)
    else:
        regression(rep, preds, splits)
        summary["r2"] = rep.data["formats"]["keras"]["r2"]
    if e.explain_examples:
        if images and splits.task == "classification":
            explain_images(rep, model, splits, preds["keras"], e)
        elif splits.test.x.ndim == 2:
            explain_table(rep, model, lambda v: _predict(model, v), splits, e)
        else:
            rep.note(f"explanations skipped: inputs of shape {splits.test.x.shape[1:]} are "
                     "neither images nor a table")
    if e.robustness_examples and splits.task == "classification":
        robustness(rep, model, splits, e)
        summary["fgsm_eps_at_half"] = rep.data["robustness"]["fgsm_eps_at_half"]
    if e.sensitive:
        fairness(rep, splits, preds, e)
        summary["disparate_impact"] = rep.data["fairness"]["keras"]["disparate_impact"]
    return _finish(rep, run_dir, tracker, summary)


def _finish(rep: Report, run_dir: Path, tracker, summary: dict[str, Any]) -> dict[str, Any]:
    if rep.data["notes"]:
        rep.lines += ["## Notes", "", *(f"- {n}" for n in rep.data["notes"]), ""]
    atomic_write_json(rep.out_dir / "evaluation.json", rep.data)
    atomic_write_text(rep.out_dir / "report.md", "\n".join(rep.lines) + "\n")
    tracker.log_metrics(rep.metrics)
    tracker.log_metrics(rep.metrics, run_id=tracker.parent_id)
    tracker.log_artifact(rep.out_dir, "evaluation")
    summary["report"] = str(rep.out_dir / "report.md")
    return {k: v for k, v in summary.items() if v is not None}
