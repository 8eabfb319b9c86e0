"""Bad input through the real CLI (`python -m pipelines` subprocesses): exit 2 and exactly
one line on stderr (no traceback, no TensorFlow/absl/MLflow start-up noise), and nothing
created: no run directory, no MLflow store. docs/errors.md lists each case."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.once  # the CLI in its own process: backend-independent here


def run_cli(tmp_path, *args, backend="tensorflow", pythonpath=()):
    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    env = {**os.environ, "KERAS_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(ROOT)])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own default must hide the noise
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", *args, "--set", f"output_dir={out}",
         "--set", f"tracking.uri=sqlite:///{db}"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    return proc, out, db


def assert_one_line_error(proc, *needles):
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]


def test_nonfinite_npz_is_one_line_and_nothing_is_created(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
    x[5, 1] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    proc, out, db = run_cli(tmp_path, "iris_mlp", "--set", "data.name=npz",
                            "--set", f"data.path={tmp_path / 'd.npz'}")
    assert_one_line_error(proc, "1 examples hold NaN or inf", "x[5], feature 1 = inf",
                          "data.nonfinite=drop")
    assert not out.exists() and not db.exists()


def test_a_model_that_cannot_take_the_data_is_refused_before_any_run(tmp_path):
    proc, out, db = run_cli(tmp_path, "rnn_sine", "--set", "model.name=cnn",
                            "--set", "data.params.length=40")
    assert_one_line_error(proc, "model 'cnn' cannot take data 'sine_classes' of input "
                                "shape (40, 1)")
    assert not out.exists() and not db.exists()


def test_stages_out_of_order_are_refused_like_a_recipe(tmp_path):
    proc, out, db = run_cli(tmp_path, "digits_cnn", "--stages", "train,quantize,prune")
    assert_one_line_error(proc, "stages: quantize after prune")
    proc, out, db = run_cli(tmp_path, "digits_cnn", "--stages", "export,train")
    assert_one_line_error(proc, "stages: export needs the trained model")
    assert not out.exists() and not db.exists()


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs mount (root only): `tmpfs("ro")` read-only, `tmpfs("size=64k")` tiny."""
    mounts = []

    def mount(options):
        where = tmp_path / f"mnt{len(mounts)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                           capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield mount
    for m in mounts:
        subprocess.run(["umount", str(m)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("options, message", [
    ("ro,size=64k", "read-only file system writing "),
    ("size=64k", "no space left on device writing "),
])
def test_read_only_and_full_output_disks_are_one_line(tmp_path, tmpfs, options, message):
    where = tmpfs(options)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", "iris_mlp", "--stages", "train",
         "--set", "train.epochs=1", "--set", f"output_dir={where}",
         "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert_one_line_error(proc, message, str(where))
    if "space" in message:
        assert "bytes free on" in proc.stderr


BLOCK = """import sys


class _Block:  # this interpreter has no {name}: `pip install kdl` without the extra
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "{name}" or fullname.startswith("{name}."):
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)


sys.meta_path.insert(0, _Block())
"""


def test_a_missing_extra_is_named_before_any_run(tmp_path):
    """Tracking on, MLflow not installed (its import blocked by a sitecustomize in the
    subprocess): one line naming the extra and the switch, before any file or run."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK.format(name="mlflow"))
    env = {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{ROOT}"}
    probe = subprocess.run([sys.executable, "-c", "import mlflow"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 1 and "No module named 'mlflow'" in probe.stderr  # blocked
    proc, out, db = run_cli(tmp_path, "iris_mlp", pythonpath=[block])
    assert_one_line_error(proc, "tracking (tracking.enabled) needs mlflow",
                          "pip install 'kdl[tracking]'", "--set tracking.enabled=false")
    assert not out.exists() and not db.exists()
