"""The default recipe end to end on the current backend, read back from disk and MLflow."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipelines.run import StageFailed, run_pipeline
from tests.pipelines.conftest import recipe


def test_default_recipe_learns(default_run):
    _, run_dir, results, _ = default_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.8  # chance is 0.1
    assert results["train"]["test_accuracy"] == metrics["test_accuracy"]
    assert np.asarray(metrics["confusion_matrix"]).sum() == 270  # the whole test split


def test_run_directory_has_every_artifact(default_run):
    _, run_dir, _, _ = default_run
    assert run_dir.name.split("-")[2] == keras.backend.backend()
    for name in ("config.yaml", "run.json", "preprocessing.json", "model.keras",
                 "history.json", "metrics.json", "training_curves.png",
                 "confusion_matrix.png", "export/report.json", "export/model_fp32.tflite",
                 "export/model_int8.tflite", "export/saved_model/saved_model.pb"):
        assert (run_dir / name).exists(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 5 and "val_accuracy" in history
    pre = json.loads((run_dir / "preprocessing.json").read_text())
    assert len(pre["normalization"]["mean"]) == 1 and pre["label_names"][3] == "3"
    assert not list(run_dir.glob(".*tmp*")), "temporary files left behind"


def test_export_parity_holds_for_the_trained_backend(default_run):
    _, run_dir, _, _ = default_run
    report = json.loads((run_dir / "export" / "report.json").read_text())
    fp32 = report["formats"]["tflite_fp32"]
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert report["formats"]["saved_model"]["max_abs_diff"] <= 1e-4
    assert report["formats"]["tflite_int8"]["metric_drop"] <= 0.01
    assert report["representative"]["samples"] == 200


def test_reloaded_model_reproduces_the_test_accuracy(default_run):
    cfg, run_dir, _, _ = default_run
    from kdl.training import evaluate
    from pipelines.stages.common import load_data

    model = keras.saving.load_model(run_dir / "model.keras")
    acc = evaluate(model, load_data(cfg).test, "classification")["accuracy"]
    assert acc == json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]


def test_mlflow_lineage(default_run, store):
    cfg, run_dir, _, tracker = default_run
    client = MlflowClient(store["uri"])
    parent = client.get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["backend"] == keras.backend.backend()
    assert tags["data_fingerprint"] == json.loads(
        (run_dir / "preprocessing.json").read_text())["data_fingerprint"]
    assert tags["version.keras"] == keras.__version__ and "git_commit" in tags
    assert parent.data.params["train.epochs"] == "5"
    assert parent.data.params["model.name"] == "cnn"
    assert parent.data.metrics["train/test_accuracy"] > 0.8
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.parent_id}'")
    stages = {r.data.tags["stage"]: r for r in children}
    assert set(stages) == {"train", "export"}
    assert all(r.info.status == "FINISHED" for r in children)
    train_id = stages["train"].info.run_id
    val_acc = client.get_metric_history(train_id, "train/val_accuracy")
    assert [m.step for m in val_acc] == [1, 2, 3, 4, 5]
    assert stages["export"].data.metrics["export/tflite_fp32/max_abs_diff"] <= 1e-4
    artifacts = {a.path for a in client.list_artifacts(train_id)}
    assert {"config.yaml", "metrics.json", "confusion_matrix.png"} <= artifacts
    versions = client.search_model_versions(f"name = 'kdl-{cfg.tracking.experiment}'")
    assert any(v.run_id == train_id for v in versions)
    # The UI's training view, and the registered version on the parent's row of the runs table.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    version = next(v.version for v in versions if v.run_id == train_id)
    assert tags["registered_model"] == f"kdl-{cfg.tracking.experiment} v{version}"
    # The data as the parent run's MLflow dataset input, its fingerprint the digest.
    (entry,) = parent.inputs.dataset_inputs
    assert entry.dataset.name == cfg.data.name
    assert entry.dataset.digest == tags["data_fingerprint"]
    assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "training"
    profile = json.loads(entry.dataset.profile)
    assert profile["features_shape"][0] == profile["targets_shape"][0] > 0


def test_every_epoch_metric_reaches_mlflow(default_run, store):
    """Metrics go through a background queue; the run's end flushes it: none is lost."""
    _, run_dir, _, tracker = default_run
    client = MlflowClient(store["uri"])
    (train,) = client.search_runs(
        [client.get_run(tracker.parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{tracker.parent_id}' and tags.stage = 'train'")
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) >= 4  # loss, accuracy, val_loss, val_accuracy
    for name, values in {**history, "learning_rate": [None] * len(history["loss"])}.items():
        logged = client.get_metric_history(train.info.run_id, f"train/{name}")
        assert sorted(m.step for m in logged) == list(range(1, len(values) + 1)), name
        if values[0] is not None:
            by_step = {m.step: m.value for m in logged}
            assert [by_step[s] for s in range(1, len(values) + 1)] == pytest.approx(values)


def test_diverging_run_fails_and_keeps_what_it_wrote(store, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype("float32")
    np.savez(tmp_path / "reg.npz", x=x, y=x @ rng.normal(size=5).astype("float32"))
    cfg = recipe(store, "iris_mlp", "data.name=npz", f"data.path={tmp_path / 'reg.npz'}",
                 "data.task=regression", "train.epochs=3", "train.learning_rate=1e9",
                 "train.optimizer=sgd", "train.schedule=constant", "train.clipnorm=null",
                 "tracking.experiment=diverge", "model.preset=tiny")
    with pytest.raises(StageFailed, match=r"training diverged: loss became \w+ at epoch 1"):
        run_pipeline(cfg, log=lambda *_: None)
    (run_dir,) = (Path(store["out"]) / "diverge").iterdir()
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())
    assert diagnosis["epoch"] == 1 and diagnosis["learning_rate"] == pytest.approx(1e9)
    assert (run_dir / "config.yaml").exists() and (run_dir / "history.json").exists()
    assert not (run_dir / "model.keras").exists()
    client = MlflowClient(store["uri"])
    runs = client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
    assert len(runs) == 2  # the parent and its train stage
    assert {r.info.status for r in runs} == {"FAILED"}
