"""The team tracking server: real PostgreSQL (OS packages) + real `mlflow server`, proxied
artifacts, on 127.0.0.1.

Never skipped: without PostgreSQL's binaries the fixture fails, saying what to
install (`.ci/run` installs them on a fresh machine).
"""

import json
import shutil
import tempfile
import threading
from pathlib import Path

import keras
import pytest
from mlflow.tracking import MlflowClient

from pipelines.run import run_pipeline
from pipelines.tracking import Tracker
from pipelines.tracking_server import TeamServer, server_env
from tests.pipelines.conftest import recipe

pytestmark = pytest.mark.once  # the tracking client is the same on every backend

TINY = ["model.preset=tiny", "train.verbose=0", "train.early_stopping.enabled=false"]


@pytest.fixture(scope="module")
def team():
    # not under pytest's tmp_path: its parents are private to root, and PostgreSQL runs as
    # the `postgres` user when the tests run as root
    root = Path(tempfile.mkdtemp(prefix="kdl-team-"))
    server = TeamServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _session(pid: int) -> list[str]:
    """The command lines of every live process in session `pid` (a server and its workers)."""
    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == pid and fields[0] != "Z":  # fields[3]: the session id
                commands.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                                .decode())
        except (OSError, IndexError, ValueError):
            pass  # it ended while being read
    return commands


def _cfg(team, tmp_path, experiment, *overrides):
    return recipe({"uri": team.url, "out": str(tmp_path / "out")}, "iris_mlp", *TINY,
                  f"tracking.experiment={experiment}", *overrides)


def test_runs_registry_and_artifacts_through_the_team_server(team, tmp_path):
    from pipelines import mobile

    assert team.postgres.url.startswith("postgresql://")
    cfg = _cfg(team, tmp_path, "team", "train.epochs=2")
    run_dir, _, tracker = run_pipeline(cfg, ["train"], log=lambda *_: None)
    assert tracker.enabled and tracker.error is None
    client = MlflowClient(team.url)
    parent = client.get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["model.preset"] == "tiny"
    (child,) = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{tracker.parent_id}'")
    assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 2
    # artifacts went through the server's proxy into its --artifacts-destination
    assert child.info.artifact_uri.startswith("mlflow-artifacts:")
    got = client.download_artifacts(child.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == json.loads((run_dir / "metrics.json").read_text())
    assert list((team.root / "artifacts").rglob("metrics.json"))
    assert client.search_model_versions("name = 'kdl-team'")  # the trained Keras model
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "contract.json").write_text("{}")
    version = mobile.register_candidate(tracker, cfg, run_dir, bundle, ["tflite_fp32"])
    mv = client.get_model_version_by_alias("kdl-team", "candidate")
    assert version == f"kdl-team v{mv.version}" and mv.tags["kind"] == "mobile-bundle"


def test_the_server_runs_without_mlflows_job_runner(team, monkeypatch):
    """The server and its uvicorn worker, not MLflow's job runner and its 7 consumers
    (docs/scale.md); a team that wants them says so in the environment."""
    commands = _session(team.mlflow.proc.pid)
    assert any("mlflow server" in c for c in commands), commands
    assert not any("_job_runner" in c or "huey" in c for c in commands), commands
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


def test_two_concurrent_runs(team):
    from pipelines.config import TrackingConfig

    errors = []

    def one(name):
        try:
            t = Tracker(TrackingConfig(uri=team.url), "concurrent")
            t.start(name, {"who": name})
            with t.stage("train"):
                for step in range(1, 11):
                    t.log_metrics({"train/loss": 1.0 / step, "train/step": step}, step=step)
            t.end("FINISHED")
            assert t.enabled, t.error
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(f"run-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    client = MlflowClient(team.url)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["who"] for r in parents) == ["run-0", "run-1"]
    for p in parents:
        assert p.info.status == "FINISHED"
        (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        hist = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in hist) == list(range(1, 11))


def test_server_restarted_mid_run(team, tmp_path, monkeypatch):
    """The server goes down after epoch 2 and comes back; training finishes and the
    metrics logged after the restart arrive (the client retries; kdl's default of one
    retry fails fast, a team sets MLFLOW_HTTP_REQUEST_MAX_RETRIES: docs/scale.md)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "8")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    cfg = _cfg(team, tmp_path, "restart", "train.epochs=6")
    restarts = []

    class Restart(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                team.mlflow.stop()  # down; back in a moment, while training goes on
                assert team.mlflow.proc.poll() is not None
                thread = threading.Thread(target=team.mlflow.start)
                thread.start()
                restarts.append(thread)

    run_dir, _, tracker = run_pipeline(cfg, ["train"], log=lambda *_: None,
                                       callbacks=[Restart()])
    restarts[0].join(timeout=300)
    assert tracker.enabled and tracker.error is None
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 6
    client = MlflowClient(team.url)
    assert client.get_run(tracker.parent_id).info.status == "FINISHED"
    (child,) = client.search_runs([client.get_experiment_by_name("restart").experiment_id],
                                  f"tags.mlflow.parentRunId = '{tracker.parent_id}'")
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
    assert steps == [1, 2, 3, 4, 5, 6]  # 3..6 logged after the restart


def test_missing_postgres_is_named(monkeypatch):
    from pipelines import tracking_server

    monkeypatch.setattr(tracking_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(tracking_server.glob, "glob", lambda pattern: [])
    with pytest.raises(tracking_server.ServerError, match="apt-get install -y postgresql"):
        tracking_server.pg_bin_dir()


def test_tune_workers_share_one_postgres_study(team, tmp_path):
    """`tune --workers 2`, 4 trials on a PostgreSQL study: each trial once, all nested
    under one MLflow run."""
    import subprocess

    import optuna

    from pipelines.cli import main

    pg = team.postgres
    subprocess.run([*pg.prefix, str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p",
                    str(pg.port), "-U", "kdl", "optuna"], check=True, capture_output=True)
    storage = f"postgresql://kdl@127.0.0.1:{pg.port}/optuna"
    space = ("tune.space={train.learning_rate: {type: float, low: 0.001, high: 0.1, log: true},"
             " data.batch_size: {type: categorical, choices: [16, 32]}}")
    args = ["tune", "iris_mlp", "--workers", "2", "--set", space, "--set", "tune.trials=4",
            "--set", f"tune.storage={storage}", "--set", "train.epochs=2",
            "--set", "train.verbose=0", "--set", "train.early_stopping.enabled=false",
            "--set", f"output_dir={tmp_path / 'out'}", "--set", f"tracking.uri={team.url}",
            "--set", "tracking.experiment=team-tune", "--set", "model.preset=tiny"]
    assert main(args) == 0
    study = optuna.load_study(study_name="iris_mlp-tune", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # four trials, none twice
    assert all(t.state.is_finished() for t in study.trials)
    client = MlflowClient(team.url)
    runs = client.search_runs([client.get_experiment_by_name("team-tune").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1", "2", "3"]
    assert (tmp_path / "out" / "team-tune" / "iris_mlp-tune" / "best.yaml").is_file()
