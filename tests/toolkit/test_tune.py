"""A 4-trial Optuna search records 4 nested MLflow runs and writes the best config as a recipe."""

import pytest

from pipelines.cli import main
from pipelines.config import ConfigError, load_config

SPACE = ("tune.space={"
         "train.learning_rate: {type: float, low: 0.001, high: 0.1, log: true}, "
         "data.batch_size: {type: categorical, choices: [16, 32]}, "
         "train.optimizer: {type: categorical, choices: [adam, sgd]}, "
         "model.params.units: {type: categorical, choices: [[16], [32, 16]]}, "
         "model.params.dropout: {type: float, low: 0.0, high: 0.3}}")


@pytest.mark.once
def test_four_trials_nested_runs_and_best_recipe(tmp_path, capsys):
    pytest.importorskip("optuna")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["tune", "iris_mlp", "--set", SPACE, "--set", "tune.trials=4",
            "--set", "train.epochs=3", "--set", f"output_dir={tmp_path / 'out'}",
            "--set", f"tracking.uri={uri}", "--set", "train.early_stopping.enabled=false"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("trial ") >= 4 and "best config:" in text

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("iris_mlp")
    runs = client.search_runs([exp.experiment_id])
    (study,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert len(trials) == 4
    assert all("train.learning_rate" in r.data.params for r in trials)
    assert "best_val_loss" in study.data.metrics

    best = tmp_path / "out" / "iris_mlp" / "iris_mlp-tune" / "best.yaml"
    cfg = load_config(str(best))  # a runnable recipe
    assert 0.001 <= cfg.train.learning_rate <= 0.1
    assert cfg.data.batch_size in (16, 32) and cfg.model.params["units"] in ([16], [32, 16])
    best_value = study.data.metrics["best_val_loss"]
    assert best_value == pytest.approx(min(r.data.metrics.get("best_val_loss", float("inf"))
                                           for r in trials))


def test_bad_search_space_is_named():
    from pipelines.tune import check_space

    with pytest.raises(ConfigError, match="tune.space is empty"):
        check_space({})
    with pytest.raises(ConfigError, match="tune.space.train.learning_rate.type"):
        check_space({"train.learning_rate": {"type": "loguniform", "low": 1, "high": 2}})
    with pytest.raises(ConfigError, match="needs choices"):
        check_space({"data.batch_size": {"type": "categorical"}})


@pytest.mark.slow
def test_parallel_processes_share_one_study(tmp_path):
    """Two `pipelines tune` processes, 2 trials each, on one SQLite storage: 4 trials, 1 study."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    optuna = pytest.importorskip("optuna")
    root = Path(__file__).parents[2]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="shared", storage=storage)  # create once, no race
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "pipelines", "tune", "iris_mlp", "--set", SPACE,
           "--set", "tune.trials=2", "--set", "train.epochs=2", "--set", "train.verbose=0",
           "--set", f"tune.storage={storage}", "--set", "tune.study_name=shared",
           "--set", f"output_dir={tmp_path / 'out'}", "--set", "tracking.enabled=false"]
    procs = [subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 4
    assert (tmp_path / "out" / "iris_mlp" / "shared" / "best.yaml").is_file()
