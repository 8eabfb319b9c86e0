"""The evaluate stage and command: on the default recipe's run (tiny settings in the
fast suite, the full report in a slow test), bad input, and the fairness recipes."""

import json
import math
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from pipelines.cli import main
from tests.pipelines.conftest import recipe

TINY = ["evaluate.explain_examples=2", "evaluate.ig_steps=8", "evaluate.smoothgrad_samples=2",
        "evaluate.robustness_examples=32", "evaluate.epsilons=[0,0.3]",
        "evaluate.noise_sigmas=[0,0.5]", "evaluate.pgd_steps=1", "evaluate.misclassified=4"]


def evaluate_copy(store, default_run, tmp_path, overrides):
    """The evaluate stage over a copy of the default run (its bundle gets a temperature)."""
    from pipelines.run import Context, run_stages
    from pipelines.tracking import Tracker

    _, run_dir, _, _ = default_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    cfg = recipe(store, "digits_cnn", "tracking.experiment=e2e-evaluate", *overrides)
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.start(copy.name, {})
    results = run_stages(Context(cfg, copy, tracker), ["evaluate"], log=lambda *_: None)
    tracker.end("FINISHED")
    return copy, results["evaluate"], tracker


def test_evaluate_stage_on_the_default_run(store, default_run, tmp_path):
    run_dir, summary, tracker = evaluate_copy(store, default_run, tmp_path, TINY)
    out = run_dir / "evaluation"
    report = json.loads((out / "evaluation.json").read_text())
    # the trained model and every exported file that runs here, per class
    assert set(report["formats"]) == {"keras", "saved_model", "tflite_fp32", "tflite_int8"}
    keras_acc = report["formats"]["keras"]["accuracy"]
    assert summary["accuracy"] == keras_acc > 0.5
    for a, b in zip(report["formats"]["tflite_fp32"]["per_class"],
                    report["formats"]["keras"]["per_class"], strict=True):
        assert a["f1"] == pytest.approx(b["f1"], abs=1e-9)  # fp32 matches the Keras model
    assert len(report["per_class_deltas"]["tflite_int8"]) == 10
    # temperature: finite, in the run and in the bundle contract, which still verifies
    t = report["calibration"]["temperature"]
    assert math.isfinite(t) and t > 0
    assert json.loads((run_dir / "calibration.json").read_text())["temperature"] == t
    assert json.loads((run_dir / "bundle" / "contract.json").read_text())[
        "calibration"]["temperature"] == t
    assert main(["verify-bundle", str(run_dir / "bundle")]) == 0
    # robustness: eps = 0 is the clean accuracy of those examples; eps > 0 costs
    r = report["robustness"]
    assert r["examples"] == 32 and r["fgsm"][1] <= r["fgsm"][0]
    assert report["explanations"]["examples"] == 2
    for name in ("report.md", "confusion.png", "roc_pr.png", "reliability.png",
                 "per_class_f1.png", "misclassified.png", "explanations.png", "robustness.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    assert "tflite_int8" in text and f"T = {t:.4f}" in text
    # MLflow: eval/... metrics on the stage run and the figures as artifacts
    client = mlflow.MlflowClient(store["uri"])
    stage_runs = client.search_runs(
        [client.get_experiment_by_name("e2e-evaluate").experiment_id],
        "tags.mlflow.runName = 'evaluate'")
    metrics = stage_runs[0].data.metrics
    assert metrics["eval/keras/accuracy"] == pytest.approx(keras_acc)
    assert "eval/tflite_int8/f1/3" in metrics and "eval/calibration/ece_after" in metrics
    names = {a.path for a in client.list_artifacts(stage_runs[0].info.run_id, "evaluation")}
    assert "evaluation/explanations.png" in names and "evaluation/report.md" in names


@pytest.mark.slow
def test_full_report_on_the_default_run(store, default_run, tmp_path):
    run_dir, summary, _ = evaluate_copy(store, default_run, tmp_path, [])
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    r = report["robustness"]
    assert all(b <= a for a, b in zip(r["fgsm"], r["fgsm"][1:], strict=False)), r["fgsm"]
    assert r["fgsm_eps_at_half"] is not None
    gaps = report["explanations"]["ig_completeness_gap_max"]
    assert set(gaps) == {"zero", "blurred"} and all(g < 0.05 for g in gaps.values()), gaps
    assert report["calibration"]["ece_after"] <= report["calibration"]["ece_before"] + 0.01


@pytest.mark.once
@pytest.mark.parametrize("argv, words", [
    (["run", "biased_credit", "--set", "evaluate.sensitive=gender"],
     ["evaluate.sensitive", "'gender'", "group"]),
    (["run", "digits_cnn", "--set", "train.reweigh=group"], ["train.reweigh", "no column"]),
    (["run", "digits_cnn", "--set", "evaluate.epsilons=[0.1,0.2]"], ["evaluate.epsilons"]),
    (["run", "digits_cnn", "--set", "evaluate.epsilons=[0,.nan]"], ["evaluate.epsilons"]),
    (["run", "digits_cnn", "--set", "evaluate.formats=[onnx]"], ["evaluate.formats[0]"]),
    (["run", "biased_credit", "--set", "train.reweigh=group", "--set",
      "train.checkpoint=true"], ["train.checkpoint=false"]),
])
def test_bad_evaluate_config_exits_2_before_any_run(argv, words, capsys, tmp_path):
    code = main([*argv, "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert not any(tmp_path.iterdir())  # no run directory was made


@pytest.mark.once
def test_evaluate_command_on_a_non_run_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines", "evaluate", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a kdl run directory" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_reweighing_moves_disparate_impact_toward_one(store):
    from pipelines.run import run_pipeline

    results = {}
    for name in ("biased_credit", "biased_credit_reweighed"):
        cfg = recipe(store, name, "stages=[train,evaluate]", "evaluate.explain_examples=1",
                     "evaluate.shap_examples=0")
        run_dir, _, _ = run_pipeline(cfg, log=lambda *_: None)
        report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
        results[name] = report["fairness"]["keras"], report["formats"]["keras"]["accuracy"]
    (before, acc0), (after, acc1) = results["biased_credit"], results["biased_credit_reweighed"]
    assert before["disparate_impact"] < 0.8 and not before["passes_80_rule"]
    assert after["disparate_impact"] > before["disparate_impact"] + 0.05
    assert acc1 > acc0 - 0.05  # a small accuracy cost at most
    assert np.isfinite([acc0, acc1]).all()
