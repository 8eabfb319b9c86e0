"""Nothing the run writes or prints carries a tracking password or this machine's paths."""

import os

import pytest

from pipelines.tracking import PROJECT_ROOT, Tracker, run_label, strip_credentials

pytestmark = pytest.mark.once


def test_credentials_leave_the_uri_for_mlflows_own_variables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert strip_credentials("https://bob:s3cr%40t@mlflow.example:5000/x") == (
        "https://mlflow.example:5000/x")
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr@t"
    assert strip_credentials("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"

    from pipelines.config import load_config

    cfg = load_config("iris_mlp", ["tracking.uri=http://alice:hunter2@127.0.0.1:1"])
    assert "hunter2" not in Tracker(cfg.tracking, cfg.name).uri


def test_run_labels_are_relative_to_the_project_or_experiment_and_run(tmp_path):
    assert run_label(PROJECT_ROOT / "saved_models" / "e" / "r") == "saved_models/e/r"
    label = run_label(tmp_path / "exp" / "run1")
    assert label == "exp/run1" and not os.path.isabs(label)
