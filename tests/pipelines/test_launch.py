"""`pipelines launch`: two local processes train the tiny recipe as one process does.

Real processes on 127.0.0.1 (`jax.distributed` through Keras, TensorFlow's
MultiWorkerMirroredStrategy with TF_CONFIG), a real SQLite MLflow store. Each
backend runs in subprocesses of its own, from the TensorFlow pass (`once`).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipelines.launch import supervise

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5  # max |w_2 processes - w_1 process| after 15 AdamW steps (measured 3e-8 .. 6e-8)
# 90 training examples in batches of 30 (no partial batch: JAX splits each batch evenly)
TINY = ["model.preset=tiny", "data.val_fraction=0.2", "data.test_fraction=0.2",
        "data.batch_size=30", "train.epochs=5", "train.early_stopping.enabled=false",
        "train.verbose=0"]


def _cli(backend: str, args: list[str], store: dict, experiment: str) -> str:
    sets = [*TINY, f"output_dir={store['out']}", f"tracking.uri={store['uri']}",
            f"tracking.experiment={experiment}"]
    cmd = [sys.executable, "-m", "pipelines", *args, "iris_mlp", "--stages", "train"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    # one device per process; make test's fast-compile XLA flags kept
    env["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _weights(stdout: str) -> list[np.ndarray]:
    import kdl.models  # noqa: F401
    import kdl.schedules  # noqa: F401

    run_dir = next(line.split(":", 1)[1].strip() for line in stdout.splitlines()
                   if line.startswith("run directory:"))
    return keras.saving.load_model(Path(run_dir) / "model.keras").get_weights()


def _two_processes_as_one(backend: str, store: dict) -> None:
    exp = f"launch-{backend}"
    two = _cli(backend, ["launch", "--processes", "2", "--set",
                         "train.distribution.kind=data_parallel"], store, exp)
    one = _cli(backend, ["run"], store, f"{exp}-single")
    a, b = _weights(two), _weights(one)
    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    assert np.isfinite(diff) and diff < TOL, diff

    client = MlflowClient(store["uri"])
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # only process 0 tracks
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["train.distribution.kind"] == "data_parallel"
    assert p["distribution.processes"] == "2" and p["distribution.replicas"] == "2"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [c.data.tags["stage"] for c in children] == ["train"]
    assert "distribution.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}


@pytest.mark.once
def test_two_jax_processes_train_as_one(store):
    _two_processes_as_one("jax", store)


@pytest.mark.once
@pytest.mark.slow
def test_two_tensorflow_workers_train_as_one(store):
    _two_processes_as_one("tensorflow", store)


@pytest.mark.once
def test_one_failing_process_fails_the_launch():
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    crash = [sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit(3)"]
    lines = []
    start = time.monotonic()
    code, _ = supervise([sleeper, crash], [{}, {}], log=lines.append)
    assert code == 3 and time.monotonic() - start < 60  # the sleeper was stopped
    assert any("process 1 failed (exit 3)" in line for line in lines)
    ok = [sys.executable, "-c", "print('hi')"]
    assert supervise([ok, ok], [{}, {}], log=lines.append)[0] == 0


def test_process_environment_is_the_standard_one():
    import json

    from pipelines.launch import process_envs

    envs = process_envs(2)
    assert [e["KERAS_DISTRIBUTION_PROCESS_ID"] for e in envs] == ["0", "1"]
    assert {e["KERAS_DISTRIBUTION_NUM_PROCESSES"] for e in envs} == {"2"}
    tf_config = [json.loads(e["TF_CONFIG"]) for e in envs]
    assert tf_config[0]["cluster"] == tf_config[1]["cluster"]
    assert envs[0]["KERAS_DISTRIBUTION_JOB_ADDRESSES"] == tf_config[0]["cluster"]["worker"][0]
    assert [t["task"]["index"] for t in tf_config] == [0, 1]


def test_bad_launch_is_one_line(capsys):
    from pipelines.cli import main

    assert main(["launch", "--processes", "0", "iris_mlp"]) == 2
    assert main(["tune", "iris_mlp", "--workers", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --processes must be >= 1 (got 0)",
                   "error: --workers must be >= 0 (got -1)"]


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="torch refuses every distribution before resume is looked at")
def test_launching_a_resumable_run_on_several_processes_is_one_line(capsys):
    from pipelines.cli import main

    resume = ["--set", "train.checkpoint=true", "--set", "train.distribution.kind=data_parallel"]
    assert main(["launch", "--processes", "2", "iris_mlp", *resume]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.checkpoint (resume) runs in one process, not 2" in err[0]
