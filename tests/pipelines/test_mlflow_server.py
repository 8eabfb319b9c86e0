"""A real `mlflow server` on 127.0.0.1: tracking over HTTP, and a server killed mid-run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import keras
import pytest
from mlflow.tracking import MlflowClient

from pipelines.run import run_pipeline
from tests.pipelines.conftest import recipe

pytestmark = pytest.mark.once  # the tracking client is the same on every backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: the server spawns workers
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    _kill(proc)
    raise TimeoutError("mlflow server did not answer /health within 120 s")


def _kill(proc):
    """SIGKILL the server and every worker process it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    proc, url = _start_server(tmp_path)
    yield proc, url
    _kill(proc)


def test_pipeline_tracks_to_a_real_server(server, store, tmp_path):
    _, url = server
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
    proc, url = server
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
                _kill(proc)

    with pytest.warns(UserWarning, match="MLflow tracking disabled"):
        run_dir, results, tracker = run_pipeline(cfg, ["train"], log=lambda *_: None,
                                                 callbacks=[KillServer()])
    assert proc.returncode is not None
    assert not tracker.enabled and "log metrics" in tracker.error
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 25  # training ran to the end
    for name in ("model.keras", "metrics.json", "config.yaml", "confusion_matrix.png"):
        assert (run_dir / name).exists(), name
    assert results["train"]["test_accuracy"] > 0.3
