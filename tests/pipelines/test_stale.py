"""A reopened run directory closes what a killed process left: RUNNING stage runs, work dirs."""

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.run import close_stale
from pipelines.tracking import Tracker

pytestmark = pytest.mark.once


def test_stale_stage_runs_end_killed_and_work_dirs_go(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config("iris_mlp", [f"tracking.uri={uri}", "tracking.experiment=stale"])
    killed = Tracker(cfg.tracking, cfg.name)  # a run whose process was SIGKILLed mid-stage
    killed.start("r", {})
    client = MlflowClient(uri)
    exp = client.get_run(killed.parent_id).info.experiment_id
    stage = client.create_run(exp, tags={"mlflow.parentRunId": killed.parent_id}).info.run_id
    done = client.create_run(exp, tags={"mlflow.parentRunId": killed.parent_id}).info.run_id
    client.set_terminated(done, "FINISHED")
    run_dir = tmp_path / "run"
    (run_dir / ".export-work-abc").mkdir(parents=True)
    (run_dir / ".quantize-work-x" / "sub").mkdir(parents=True)
    (run_dir / ".model.keras.123.tmp").write_text("half")
    (run_dir / "model.keras").write_text("kept")
    close_stale(run_dir, Tracker(cfg.tracking, cfg.name), killed.parent_id, log=lambda *_: None)
    assert client.get_run(stage).info.status == "KILLED"
    assert client.get_run(done).info.status == "FINISHED"
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.keras"]


def test_a_stopped_launch_marks_its_running_run_failed(tmp_path):
    """`launch` ends the run of a process it stopped FAILED (`tracking.mark_failed`), and
    leaves a finished run alone."""
    from pipelines.tracking import mark_failed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("launch")
    running, done = (client.create_run(exp).info.run_id for _ in range(2))
    client.set_terminated(done, "FINISHED")
    mark_failed(uri, running)
    mark_failed(uri, done)
    assert client.get_run(running).info.status == "FAILED"
    assert client.get_run(done).info.status == "FINISHED"
