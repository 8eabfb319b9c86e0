"""The CLI: bad input exits 2 with one helpful line; `list` shows the registries."""

import os
import subprocess
import sys

import pytest

from pipelines.cli import main


@pytest.mark.parametrize("argv, words", [
    (["run", "digits_cn"], ["unknown recipe 'digits_cn'", "Did you mean 'digits_cnn'"]),
    (["run", "digits_cnn", "--set", "train.epoch=3"], ["Did you mean 'epochs'"]),
    (["run", "digits_cnn", "--set", "train.epochs=three"], ["train.epochs", "expected int"]),
    (["run", "digits_cnn", "--set", "model.name=vgg99"], ["unknown model 'vgg99'"]),
    (["run", "digits_cnn", "--stages", "train,deploy"], ["unknown stage 'deploy'"]),
    (["export", "/nonexistent/run"], ["not a kdl run directory"]),
])
def test_bad_input_exits_2_with_the_fix(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for w in words:
        assert w in err


def test_missing_csv_column_exits_2(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,species\n1,2,a\n2,3,b\n")
    code = main(["run", "digits_cnn", "--set", "data.name=csv", "--set", f"data.path={path}",
                 "--set", "data.target=label"])
    assert code == 2
    assert "column 'label' is not in t.csv" in capsys.readouterr().err


def test_export_of_a_run_without_model_exits_2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: x\n")
    assert main(["export", str(run_dir), "--set", "tracking.enabled=false"]) == 2
    assert "has no model.keras" in capsys.readouterr().err


def test_list_shows_recipes_models_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("digits_cnn", "iris_mlp", "cnn", "mlp", "digits", "breast_cancer",
                 "warmup_cosine", "tflite_int8"):
        assert word in out


@pytest.mark.once
def test_real_process_prints_no_traceback():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", "nope"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: unknown recipe 'nope'" in proc.stderr and "Traceback" not in proc.stderr
