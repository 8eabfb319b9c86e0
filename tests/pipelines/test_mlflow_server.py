"""A real `mlflow server` on 127.0.0.1: tracking over HTTP, and a server killed mid-run."""

import json
import signal
import time

import keras
import pytest
from mlflow.tracking import MlflowClient

from pipelines.run import run_pipeline
from pipelines.tracking_server import MlflowServer
from tests.pipelines.conftest import recipe

pytestmark = pytest.mark.once  # the tracking client is the same on every backend


@pytest.fixture
def server(tmp_path):
    """kdl's `MlflowServer` over a SQLite store; SIGKILLed with its workers at the end."""
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def test_pipeline_tracks_to_a_real_server(server, store, tmp_path):
    url = server.url
    local = {"uri": url, "out": str(tmp_path / "out")}
    cfg = recipe(local, "digits_cnn", "model.preset=tiny", "train.epochs=2",
                 "tracking.experiment=over-http")
    run_dir, _, tracker = run_pipeline(cfg, ["train"], log=lambda *_: None)
    assert tracker.enabled and tracker.error is None
    client = MlflowClient(url)
    parent = client.get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.preset"] == "tiny"
    (child,) = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{tracker.parent_id}'")
    assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 2
    arts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"metrics.json", "config.yaml"} <= arts  # uploaded through the server
    local_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert child.data.metrics["train/test_accuracy"] == pytest.approx(
        local_metrics["test_accuracy"])
    assert client.search_model_versions("name = 'kdl-over-http'")


def test_training_survives_the_server_dying_mid_run(server, tmp_path):
    url = server.url
    local = {"uri": url, "out": str(tmp_path / "out")}
    cfg = recipe(local, "digits_cnn", "model.preset=tiny", "train.epochs=25",
                 "train.early_stopping.enabled=false", "tracking.experiment=dies")
    client = MlflowClient(url)

    class KillServer(keras.callbacks.Callback):
        """Kills the real server process once two epochs are logged on it."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # metrics are sent by a background thread: wait for the first
                experiment = client.get_experiment_by_name("dies").experiment_id
                deadline = time.monotonic() + 60
                while not any("train/loss" in r.data.metrics
                              for r in client.search_runs([experiment])):
                    assert time.monotonic() < deadline, "no epoch metric reached the server"
                    time.sleep(0.1)
                server.stop(signal.SIGKILL)

    with pytest.warns(UserWarning, match="MLflow tracking disabled"):
        run_dir, results, tracker = run_pipeline(cfg, ["train"], log=lambda *_: None,
                                                 callbacks=[KillServer()])
    assert server.proc.returncode is not None
    assert not tracker.enabled and "log metrics" in tracker.error
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 25  # training ran to the end
    for name in ("model.keras", "metrics.json", "config.yaml", "confusion_matrix.png"):
        assert (run_dir / name).exists(), name
    assert results["train"]["test_accuracy"] > 0.3
