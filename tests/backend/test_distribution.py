"""`train.distribution` on simulated devices: 2 devices train as 1 does, a layout shards,
a run interrupted and resumed under a distribution ends as an uninterrupted one, a model
trained by its own loss (VAE) and per-group rates (TensorFlow) train as on one device.

Devices are simulated (`XLA_FLAGS=--xla_force_host_platform_device_count=2`,
which kdl also reads on TensorFlow to make two logical CPUs), so each backend
runs in a subprocess of its own (tests/backend/distributed_worker.py): the
device count is fixed when JAX or TensorFlow starts. Both backends run from the
TensorFlow pass (`once`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdl.backend.distribution import check_config
from kdl.config import DistributionConfig

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5  # max |w_2 devices - w_1 device| after 20 AdamW steps (measured 3e-8 to 9e-8)
DP = {"kind": "data_parallel", "devices": 2}
MP = {"kind": "model_parallel", "devices": 2, "mesh": {"batch": 1, "model": 2},
      "layout": {"dense_.*kernel": [None, "model"]}}
# Checkpoints every 3 steps; interrupted after step 10 -> resumed from step 9, mid-epoch
# (4 steps an epoch). A global_clipnorm small enough to clip every step, so that a
# restored optimizer that clipped each replica's share (TensorFlow) would show.
RESUME = {"checkpoint": True, "checkpoint_every_steps": 3, "clipnorm": None,
          "global_clipnorm": 0.05}
# Per-group rates, clipnorm small enough to clip every step (each group's optimizer clips).
GROUPS = {"clipnorm": 0.02, "param_groups": [{"match": "^dense_0/", "lr_scale": 0.3}]}
RESUME_RUNS = [{"name": "one_ckpt", "distribution": {}, "train": RESUME},
               {"name": "dp_resumed", "distribution": DP, "train": RESUME, "interrupt_at": 10}]


def _train(backend: str, runs: list[dict], tmp_path) -> dict:
    out = tmp_path / f"{backend}.npz"
    # the device count added to the caller's XLA flags (make test's fast-compile ones)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": flags.strip(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/backend/distributed_worker.py"),
                           str(out), json.dumps(runs)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def _max_diff(d: dict, a: str, b: str) -> float:
    keys = sorted(k.split("/", 1)[1] for k in d if k.startswith(a + "/w"))
    diffs = [np.abs(d[f"{a}/{k}"] - d[f"{b}/{k}"]).max() for k in keys]
    assert diffs and all(np.isfinite(diffs)), diffs
    return float(max(diffs))


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory):
    """One JAX subprocess for every JAX case (each start-up costs seconds)."""
    return _train("jax", [{"name": "one", "distribution": {}},
                          {"name": "dp", "distribution": DP},
                          {"name": "mp", "distribution": MP}, *RESUME_RUNS,
                          {"name": "vae_one", "distribution": {}, "model": "vae"},
                          {"name": "vae_dp", "distribution": DP, "model": "vae"}],
                  tmp_path_factory.mktemp("jax"))


@pytest.fixture(scope="module")
def tf_runs(tmp_path_factory):
    """One TensorFlow subprocess for every TensorFlow case."""
    return _train("tensorflow", [{"name": "one", "distribution": {}},
                                 {"name": "dp", "distribution": DP}, *RESUME_RUNS,
                                 {"name": "one_groups", "distribution": {}, "train": GROUPS},
                                 {"name": "dp_groups", "distribution": DP, "train": GROUPS}],
                  tmp_path_factory.mktemp("tensorflow"))


def _on_two_devices_as(d: dict, name: str, reference: str) -> None:
    """Run `name` ended with every variable on both devices, and with the weights and
    outputs of the one-device run `reference`."""
    assert int(d[f"{name}/devices_per_variable"]) == 2
    assert _max_diff(d, reference, name) < TOL
    assert np.abs(d[f"{reference}/pred"] - d[f"{name}/pred"]).max() < TOL


def _resumed_as_uninterrupted(d: dict) -> None:
    """The run interrupted at step 10 and resumed (a new model loaded inside the
    distribution scope) ends as the uninterrupted one-device run."""
    assert int(d["dp_resumed/resumed_from"]) == 9  # mid-epoch: a part-done epoch finished
    _on_two_devices_as(d, "dp_resumed", "one_ckpt")


@pytest.mark.once
def test_jax_data_and_model_parallel_train_as_one_device(jax_runs):
    d = jax_runs
    assert json.loads(str(d["dp/devices"])) == ["cpu:0", "cpu:1"]
    for name in ("dp", "mp"):
        assert _max_diff(d, "one", name) < TOL, name
        assert np.abs(d["one/pred"] - d[f"{name}/pred"]).max() < TOL
    dp, mp = json.loads(str(d["dp/layouts"])), json.loads(str(d["mp/layouts"]))
    assert all("model" not in spec for spec in dp.values())  # replicated
    assert mp["dense_0/kernel"] == [None, "model"] and mp["dense_1/kernel"] == [None, "model"]
    assert "model" not in mp["head/kernel"]  # not named by the layout: replicated


@pytest.mark.once
def test_jax_resume_under_data_parallel_ends_as_uninterrupted(jax_runs):
    _resumed_as_uninterrupted(jax_runs)


@pytest.mark.once
def test_jax_custom_train_model_data_parallel_trains_as_one_device(jax_runs):
    # the VAE's own train step, its reparameterization noise included
    _on_two_devices_as(jax_runs, "vae_dp", "vae_one")


@pytest.mark.once
def test_tensorflow_mirrored_trains_as_one_device(tf_runs):
    d = tf_runs
    assert len(json.loads(str(d["dp/devices"]))) == 2
    assert _max_diff(d, "one", "dp") < TOL  # clipnorm=1.0 (the default) included
    assert np.abs(d["one/pred"] - d["dp/pred"]).max() < TOL


@pytest.mark.once
def test_tensorflow_resume_under_mirrored_ends_as_uninterrupted(tf_runs):
    _resumed_as_uninterrupted(tf_runs)


@pytest.mark.once
def test_tensorflow_param_groups_under_mirrored_train_as_one_device(tf_runs):
    d = tf_runs
    assert _max_diff(d, "one", "one_groups") > 1e-3  # the groups change training
    _on_two_devices_as(d, "dp_groups", "one_groups")


def test_custom_train_models_are_refused_on_tensorflow_only():
    from kdl.backend.distribution import custom_training_refusal

    d = DistributionConfig(kind="data_parallel", devices=2)
    assert "same random noise" in custom_training_refusal(d, "vae", "tensorflow")
    assert custom_training_refusal(d, "vae", "jax") is None
    assert custom_training_refusal(DistributionConfig(), "vae", "tensorflow") is None


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") == "torch",
                    reason="torch refuses every distribution before resume is looked at")
def test_resume_on_several_processes_is_refused_except_jax_data_parallel():
    from kdl.config import ConfigError
    from pipelines.config import from_dict, validate

    train = {"checkpoint": True, "distribution": {**DP, "num_processes": 2, "process_id": 0}}
    if os.environ.get("KERAS_BACKEND") == "jax":  # tests/pipelines/test_launch.py resumes it
        validate(from_dict({"train": train}))
    else:
        with pytest.raises(ConfigError, match="on 2 tensorflow processes is not supported"):
            validate(from_dict({"train": train}))
    validate(from_dict({"train": {"checkpoint": True, "distribution": DP}}))  # one process


def test_the_equivalence_gate_catches_a_difference():
    d = {"a/w0": np.zeros(3), "b/w0": np.array([0, 0, 1e-3])}
    assert _max_diff(d, "a", "b") > TOL
    with pytest.raises(AssertionError):
        _max_diff({"a/w0": np.zeros(1), "b/w0": np.array([np.nan])}, "a", "b")


@pytest.mark.parametrize("cfg, backend, message", [
    (DP, "torch", "needs the jax or tensorflow backend"),
    (MP, "tensorflow", "needs the jax backend"),
    ({"kind": "none", "layout": {"x": [None]}}, "jax", "needs train.distribution.kind"),
    ({**DP, "layout": {"x": [None]}}, "jax", "set train.distribution.kind=model_parallel"),
    ({**MP, "layout": {"dense": [None, "modle"]}}, "jax", "'modle' is not a mesh axis"),
    ({**MP, "layout": {"dense(": [None]}}, "jax", "not a regular expression"),
    ({**MP, "devices": 4}, "jax", "has 2 devices"),
    ({"kind": "model_parallel", "mesh": {"batch": 2}}, "jax", "needs a mesh and a layout"),
    ({"kind": "data_parallel", "devices": 3}, "jax", "does not split over 3"),
    ({"kind": "data_parallel", "devices": 0}, "tensorflow", "must be >= 1"),
])
def test_bad_distribution_is_named(cfg, backend, message):
    from pipelines.config import from_dict

    d = from_dict({"train": {"distribution": cfg}}).train.distribution
    got = check_config(d, 32, backend)
    assert got is not None and message in got, got


def test_a_jax_batch_that_the_processes_do_not_split_is_named(monkeypatch):
    from pipelines.config import from_dict

    for k in ("KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_NUM_PROCESSES", "SLURM_NTASKS",
              "TF_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    d = from_dict({"train": {"distribution": {"kind": "data_parallel"}}}).train.distribution
    message = "data.batch_size 63 does not split over 2 processes: make it a multiple of 2"
    assert check_config(d, 63, "jax", processes=2) == message  # a launcher's count
    assert check_config(d, 64, "jax", processes=2) is None
    assert check_config(d, 63, "jax") is None  # one process
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")  # a launched process
    assert check_config(d, 63, "jax") == message


@pytest.mark.once  # the CLI's distributed path needs JAX or TensorFlow; the check is the same
@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "abc"}, "JAX_NUM_PROCESSES='abc' is not a whole number (the process"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not a whole number"),
    ({"TF_CONFIG": "{bad"}, "TF_CONFIG is not valid JSON"),
])
def test_a_malformed_process_variable_is_named_not_a_traceback(monkeypatch, capsys, tmp_path,
                                                                env, message):
    from kdl.backend.distribution import process_env, resume_refusal
    from pipelines.cli import main

    for k in ("KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_NUM_PROCESSES", "SLURM_NTASKS",
              "TF_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        process_env()
    d = DistributionConfig(kind="data_parallel")
    assert message in check_config(d, 32, "jax") and message in resume_refusal(d)
    out = tmp_path / "out"
    code = main(["run", "iris_mlp", "--set", "train.distribution.kind=data_parallel",
                 "--set", f"output_dir={out}", "--set", "tracking.enabled=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_good_distributions_pass():
    assert check_config(DistributionConfig(), 32, "torch") is None
    for cfg, backend in ((DP, "tensorflow"), (DP, "jax"), (MP, "jax")):
        from pipelines.config import from_dict

        d = from_dict({"train": {"distribution": cfg}}).train.distribution
        assert check_config(d, 32, backend) is None


def test_processes_from_the_standard_variables(monkeypatch):
    import json as _json

    from kdl.backend.distribution import process_env, setup

    for k in ("KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_NUM_PROCESSES", "SLURM_NTASKS",
              "TF_CONFIG", "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert process_env() == (None, 1, 0)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert process_env() == (None, 4, 3)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert process_env() == ("10.0.0.1:1234", 2, 1)  # JAX's before SLURM's
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "h:1")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "3")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "2")
    assert process_env() == ("h:1", 3, 2)  # Keras's first
    d = DistributionConfig(kind="data_parallel", coordinator="c:9", num_processes=5, process_id=0)
    assert process_env(d) == ("c:9", 5, 0)  # the config over the environment
    for k in ("KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_NUM_PROCESSES", "SLURM_NTASKS"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("TF_CONFIG", _json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                 "task": {"type": "worker", "index": 1}}))
    assert process_env() == ("a:1", 2, 1)
    with pytest.raises(ValueError, match="set kind=data_parallel"):
        setup(DistributionConfig())  # several processes, nothing to distribute
