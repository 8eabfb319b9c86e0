"""`python -m pipelines tune <recipe>`: Optuna search over the recipe's `tune.space`.

Each trial trains the recipe with sampled values of dotted config keys, reports
`tune.metric` every epoch to a median pruner, and is an MLflow run nested under
the study's run. Several processes may run `tune` on the same recipe at once:
they share the Optuna storage (SQLite by default) and the study's MLflow run
(its id is kept as a study attribute). The best trial's config is written as a
recipe, `best.yaml`, next to the storage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import yaml

from kdl import training
from kdl.config import merge_override
from pipelines.config import (
    ConfigError,
    ExperimentConfig,
    experiment_dir,
    from_dict,
    save_config,
    to_dict,
    validate,
)
from pipelines.toolkit import data_and_model
from pipelines.tracking import Tracker, environment_tags

KINDS = ("float", "int", "categorical")
PRIMITIVE = (type(None), bool, int, float, str)


def _optuna():
    try:
        import optuna
    except ImportError as e:
        raise ImportError("pipelines tune needs Optuna: pip install optuna==5.0.0") from e
    return optuna


def check_space(space: dict[str, dict[str, Any]]) -> None:
    """Fail early, naming the key, on a malformed search space."""
    if not space:
        raise ConfigError("tune.space is empty: declare what to search, e.g. "
                          "tune.space={train.learning_rate: {type: float, low: 1e-4, "
                          "high: 0.1, log: true}}")
    for key, spec in space.items():
        kind = spec.get("type")
        if kind not in KINDS:
            raise ConfigError(f"tune.space.{key}.type must be one of {', '.join(KINDS)}, "
                              f"got {kind!r}")
        need = ("choices",) if kind == "categorical" else ("low", "high")
        missing = [k for k in need if k not in spec]
        if missing:
            raise ConfigError(f"tune.space.{key} needs {', '.join(missing)}")
        extra = set(spec) - {"type", "log", "step", *need}
        if extra:
            raise ConfigError(f"tune.space.{key}: unknown option {sorted(extra)[0]!r}")


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per key. Non-primitive choices (lists) are sampled by their YAML."""
    values = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                              log=bool(spec.get("log", False)))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]),
                                            log=bool(spec.get("log", False)))
        else:
            choices = spec["choices"]
            if all(isinstance(c, PRIMITIVE) for c in choices):
                values[key] = trial.suggest_categorical(key, choices)
            else:
                text = trial.suggest_categorical(
                    key, [yaml.safe_dump(c, default_flow_style=True).strip() for c in choices])
                values[key] = yaml.safe_load(text)
    return values


def _run_workers(cfg: ExperimentConfig, workers: int, storage: str, study_name: str,
                 recipe: str, overrides: list[str], log) -> None:
    """`workers` local `pipelines tune --worker` processes split `tune.trials`."""
    import sys

    from pipelines.launch import supervise

    n = cfg.tune.trials
    counts = [c for c in (n // workers + (i < n % workers) for i in range(workers)) if c]
    base = [sys.executable, "-m", "pipelines", "tune", recipe, "--worker"]
    for text in overrides:
        base += ["--set", text]
    cmds = [[*base, "--set", f"tune.trials={c}", "--set", f"tune.storage={storage}",
             "--set", f"tune.study_name={study_name}",
             "--set", f"tune.seed={cfg.tune.seed + i}"]  # workers sample apart
            for i, c in enumerate(counts)]
    code, _ = supervise(cmds, [{} for _ in cmds], log=log)
    if code != 0:
        raise RuntimeError(f"a tune worker failed (exit {code})")


def _decode(space, params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        spec = space.get(key, {})
        if spec.get("type") == "categorical" and not all(
                isinstance(c, PRIMITIVE) for c in spec["choices"]):
            value = yaml.safe_load(value)
        out[key] = value
    return out


def apply(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """`cfg` with dotted keys set to `values`, validated."""
    data = to_dict(cfg)
    for key, value in values.items():
        merge_override(data, key.split("."), value)
    new = from_dict(data)
    validate(new)
    return new


class _Report(keras.callbacks.Callback):
    """Reports the metric to Optuna each epoch and stops a trial the pruner rejects."""

    def __init__(self, trial, metric: str):
        super().__init__()
        self.trial, self.metric, self.pruned, self.values = trial, metric, False, []

    def on_epoch_end(self, epoch, logs=None):
        if self.metric not in (logs or {}):
            raise ConfigError(f"tune.metric {self.metric!r} is not logged by training; "
                              f"available: {', '.join(sorted(logs or {}))}")
        value = float(logs[self.metric])
        self.values.append(value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


def _train_trial(cfg: ExperimentConfig, trial, tracker) -> tuple[float, bool]:
    splits, model = data_and_model(cfg)
    report = _Report(trial, cfg.tune.metric)
    result = training.fit(model, splits, cfg.train, cfg.data.batch_size,
                          callbacks=[report, tracker.keras_callback("")])
    if result.diagnosis is not None or not report.values:
        return float("nan"), False
    best = min(report.values) if cfg.tune.direction == "minimize" else max(report.values)
    return best, report.pruned


def tune(cfg: ExperimentConfig, log=print, *, workers: int = 0, worker: bool = False,
         recipe: str | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Run `cfg.tune.trials` trials; write `best.yaml`; return a summary.

    `workers=N` runs them in N local worker processes (`pipelines tune --workers N`)
    sharing this process's study (`tune.storage`, e.g. `postgresql://...`; Optuna
    hands each trial to one worker) and MLflow run (made here, before they start);
    `recipe` and `overrides` are what the workers load. A worker (`worker=True`)
    runs its trials only: the launching process writes `best.yaml` and ends the run.
    """
    optuna = _optuna()
    t = cfg.tune
    check_space(t.space)
    apply(cfg, {k: (s["choices"][0] if s["type"] == "categorical" else s["low"])
                for k, s in t.space.items()})  # every key exists and takes a value
    study_name = t.study_name or f"{cfg.name}-tune"
    out_dir = experiment_dir(cfg) / study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = t.storage or f"sqlite:///{out_dir / 'optuna.db'}"
    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=True, direction=t.direction,
        sampler=optuna.samplers.TPESampler(seed=t.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=t.pruner_startup_trials,
                                           n_warmup_steps=t.pruner_warmup_epochs))
    tracker = Tracker(cfg.tracking, cfg.name)
    parent = study.user_attrs.get("mlflow_run_id")
    tracker.start(study_name, {**environment_tags(), "recipe": cfg.name, "optuna_study":
                               study_name, "optuna_storage": storage}, parent_id=parent)
    if parent is None and tracker.parent_id:
        study.set_user_attr("mlflow_run_id", tracker.parent_id)

    def objective(trial):
        values = suggest(trial, t.space)
        trial_cfg = apply(cfg, values)
        with tracker.stage(f"trial-{trial.number}"):
            tracker.log_params({**values, "trial": trial.number})
            value, pruned = _train_trial(trial_cfg, trial, tracker)
            tracker.set_tags({"trial": trial.number, "pruned": pruned})
            if math.isfinite(value):
                tracker.log_metrics({f"best_{t.metric}": value})
        log(f"trial {trial.number}: {values} -> {t.metric}={value:.4g}"
            f"{' (pruned)' if pruned else ''}")
        if pruned:
            raise optuna.TrialPruned()
        if not math.isfinite(value):
            raise optuna.TrialPruned()  # diverged: count it as a bad, stopped trial
        return value

    try:
        if workers:
            _run_workers(cfg, workers, storage, study_name, recipe, overrides, log)
        else:
            study.optimize(objective, n_trials=t.trials)
    except BaseException:
        if not worker:
            tracker.end("FAILED")
        raise
    if worker:  # the launching process ends the study's run and writes best.yaml
        return {"trials": t.trials, "mlflow_run_id": tracker.parent_id, "storage": storage}
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        tracker.end("FAILED")
        raise RuntimeError(f"no trial of study {study_name!r} completed")
    best = study.best_trial
    best_cfg = apply(cfg, _decode(t.space, best.params))
    best_path = out_dir / "best.yaml"
    save_config(best_cfg, Path(best_path))
    tracker.log_metrics({f"best_{t.metric}": best.value, "best_trial": best.number})
    tracker.log_params({f"best.{k}": v for k, v in best.params.items()})
    tracker.log_artifact(best_path)
    tracker.end("FINISHED")
    log(f"best trial {best.number}: {t.metric}={best.value:.4g} {best.params}")
    log(f"best config: {best_path}  (python -m pipelines run {best_path})")
    return {"best_value": best.value, "best_params": best.params, "best_config": best_path,
            "trials": len(study.trials), "mlflow_run_id": tracker.parent_id,
            "storage": storage}
