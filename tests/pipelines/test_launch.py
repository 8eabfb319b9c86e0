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


def _cli(backend: str, args: list[str], store: dict, experiment: str, recipe: bool = True,
         ok: bool = True, path: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> str:
    """`python -m pipelines <args> [iris_mlp --set TINY... --set sets...] --stages train`;
    its stdout. `path`: directories put before the tree on PYTHONPATH."""
    cmd = [sys.executable, "-m", "pipelines", *args]
    if recipe:
        cmd.append("iris_mlp")
        for s in [*TINY, f"output_dir={store['out']}", f"tracking.uri={store['uri']}",
                  f"tracking.experiment={experiment}", *sets]:
            cmd += ["--set", s]
    cmd += ["--stages", "train"]
    env = {**os.environ, "KERAS_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join([*path, str(ROOT)]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    # one device per process; make test's fast-compile XLA flags kept
    env["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert (proc.returncode == 0) == ok, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _run_dir(stdout: str) -> Path:
    return Path(next(line.split(":", 1)[1].strip() for line in stdout.splitlines()
                     if line.startswith("run directory:")))


def _weights(stdout: str) -> list[np.ndarray]:
    import kdl.models  # noqa: F401
    import kdl.schedules  # noqa: F401

    return keras.saving.load_model(_run_dir(stdout) / "model.keras").get_weights()


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _two_processes_as_one(backend: str, store: dict) -> None:
    exp = f"launch-{backend}"
    two = _cli(backend, ["launch", "--processes", "2", "--set",
                         "train.distribution.kind=data_parallel"], store, exp)
    one = _cli(backend, ["run"], store, f"{exp}-single")
    diff = _max_diff(_weights(two), _weights(one))
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


@pytest.mark.once  # in make test: issue 15 asks CI to run the distributed tests (~100-220 s)
def test_two_tensorflow_workers_train_as_one(store):
    _two_processes_as_one("tensorflow", store)


# Process 1 of the interrupted launch: before its step FAIL_AFTER + 1 it waits for process
# 0's checkpoint of step FAIL_AFTER (mid-epoch 3 of 3-step epochs), then fails. It also
# records any checkpoint it writes (none: process 0 writes them).
FAIL_AFTER = 8
INJECT = """
import os
if os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID") == "1":
    import glob, time
    import kdl.callbacks.checkpoint as c

    save, begin = c.ResumableCheckpoint.save, c.ResumableCheckpoint.on_train_batch_begin

    def recorded_save(self, *args, **kwargs):
        path = save(self, *args, **kwargs)
        if path is not None:
            with open(os.environ["KDL_TEST_SAVES"], "a") as f:
                f.write(str(path) + "\\n")
        return path

    def failing_begin(self, batch, logs=None):
        begin(self, batch, logs)
        fail = os.environ.get("KDL_TEST_FAIL_AFTER")
        if fail and self.global_step == int(fail):
            deadline = time.monotonic() + 120
            want = "step-%09d" % int(fail)
            while time.monotonic() < deadline and not any(
                    open(p).read().strip() == want for p in glob.glob(
                        os.environ["KDL_TEST_OUT"] + "/*/*/checkpoints/latest")):
                time.sleep(0.05)
            raise RuntimeError("injected failure after step " + fail)

    c.ResumableCheckpoint.save = recorded_save
    c.ResumableCheckpoint.on_train_batch_begin = failing_begin
"""


@pytest.mark.once
@pytest.mark.slow  # three 2-process launches (~3x test_two_jax_processes_train_as_one)
def test_two_jax_processes_resume_to_the_uninterrupted_weights(store, tmp_path, monkeypatch):
    """A 2-process run interrupted mid-epoch (process 1 fails) and resumed with
    `launch --resume` ends with the uninterrupted 2-process run's weights: every process
    restarts its shard of the batches at the checkpoint, which process 0 alone wrote."""
    import json

    (tmp_path / "sitecustomize.py").write_text(INJECT)
    saves = tmp_path / "saves.txt"
    out = tmp_path / "out"
    monkeypatch.setenv("KDL_TEST_SAVES", str(saves))
    monkeypatch.setenv("KDL_TEST_OUT", str(out))
    resumable = ["launch", "--processes", "2", "--set", "train.distribution.kind=data_parallel",
                 "--set", "train.checkpoint=true", "--set", "train.checkpoint_every_steps=2"]
    exp = "launch-resume"
    whole = _cli("jax", resumable, store, exp, path=(str(tmp_path),))
    assert (_run_dir(whole) / "checkpoints" / "latest").is_file()
    monkeypatch.setenv("KDL_TEST_FAIL_AFTER", str(FAIL_AFTER))
    cut = _cli("jax", resumable, store, exp, ok=False, path=(str(tmp_path),),
               sets=(f"output_dir={out}",))
    run_dir = _run_dir(cut)
    assert run_dir.parent.parent == out and not (run_dir / "model.keras").exists()
    state = json.loads((run_dir / "checkpoints" / "step-000000008" / "state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 2)  # mid-epoch: 2 of 3 batches
    monkeypatch.delenv("KDL_TEST_FAIL_AFTER")
    _cli("jax", ["launch", "--processes", "2", "--resume", str(run_dir)], store, exp,
         recipe=False, path=(str(tmp_path),))
    assert not saves.exists()  # process 1 never wrote a checkpoint
    diff = _max_diff(_weights(whole), keras.saving.load_model(
        run_dir / "model.keras").get_weights())
    assert np.isfinite(diff) and diff < TOL, diff


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


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="JAX: every process feeds an equal shard of each batch")
def test_a_batch_the_jax_processes_cannot_share_is_one_line_before_any_run(capsys, store):
    from pipelines.cli import main

    sets = [f"output_dir={store['out']}", f"tracking.uri={store['uri']}",
            "train.distribution.kind=data_parallel", "data.batch_size=63"]
    before = sorted(Path(store["out"]).rglob("*"))
    assert main(["launch", "--processes", "2", "iris_mlp",
                 *(a for s in sets for a in ("--set", s))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: data.batch_size 63 does not split over 2 processes: make it a "
                   "multiple of 2"]
    assert sorted(Path(store["out"]).rglob("*")) == before  # no run directory


@pytest.mark.once  # TensorFlow: several workers do not resume (JAX data parallel does)
def test_launching_a_resumable_tensorflow_run_on_several_processes_is_one_line(capsys,
                                                                            tmp_path):
    from pipelines.cli import main

    resume = ["--set", "train.checkpoint=true", "--set", "train.distribution.kind=data_parallel"]
    assert main(["launch", "--processes", "2", "iris_mlp", *resume]) == 2
    assert main(["launch", "--processes", "2"]) == 2  # neither a recipe nor --resume
    assert main(["launch", "--processes", "2", "--resume", str(tmp_path)]) == 2  # not a run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "train.checkpoint (resume) on 2 tensorflow processes" in err[0]
    assert err[1].startswith("error: launch takes a recipe (with --set), or --resume RUN_DIR")
    assert "is not a kdl run directory" in err[2]


@pytest.mark.once
def test_which_distributions_resume_on_several_processes():
    from kdl.backend.distribution import resume_refusal
    from kdl.config import DistributionConfig

    dp = DistributionConfig(kind="data_parallel")
    mp = DistributionConfig(kind="model_parallel", mesh={"batch": 1, "model": 2},
                            layout={"kernel": [None, "model"]})
    assert resume_refusal(dp, 2, backend="jax") is None
    assert resume_refusal(mp, 1, backend="jax") is None
    assert resume_refusal(dp, 1, backend="tensorflow") is None
    assert "runs data_parallel only" in resume_refusal(mp, 2, backend="jax")
    assert "2 tensorflow processes" in resume_refusal(dp, 2, backend="tensorflow")
