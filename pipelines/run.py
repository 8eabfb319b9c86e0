"""The run lifecycle: start a run, or reopen one (export, bench, resume); run stages in it.

A run is a directory (`<output_dir>/<experiment>/<timestamp>-<backend>-<random>`)
holding `config.yaml` and `run.json` (its MLflow parent run), under one MLflow
parent run with a nested run per stage. `run_pipeline` starts one;
`continue_run` reopens one (its config, with `--set` overrides; its parent run)
to run more stages in it. Either way the parent run ends FINISHED or FAILED.
"""

from __future__ import annotations

import importlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import keras

from kdl.io import atomic_write_json
from pipelines import toolkit
from pipelines.config import (
    ExperimentConfig,
    experiment_dir,
    flatten,
    load_run_config,
    save_config,
    to_dict,
)
from pipelines.stages.common import Context, StageFailed, check_model_takes_data
from pipelines.tracking import Tracker, environment_tags, run_label, strip_credentials

__all__ = ["Context", "StageFailed", "continue_run", "run_pipeline", "run_stages",
           "summary_table"]


def stage_function(name: str):
    """`run(ctx)` of `pipelines/stages/<name>.py`, a stage of `pipelines.config.STAGES`."""
    return importlib.import_module(f"pipelines.stages.{name}").run


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """`<output_dir>/<experiment>/<timestamp>-<backend>-<random>`; never an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = experiment_dir(cfg) / f"{stamp}-{keras.backend.backend()}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def run_stages(ctx: Context, stages: list[str], log=print) -> dict[str, dict[str, Any]]:
    """Run `stages` in order; each in its own nested MLflow run. Returns their summaries."""
    results: dict[str, dict[str, Any]] = {}
    for name in stages:
        start = time.perf_counter()
        with ctx.tracker.stage(name):
            results[name] = stage_function(name)(ctx)
        seconds = time.perf_counter() - start
        line = ", ".join(f"{k}={_fmt(v)}" for k, v in results[name].items()
                         if isinstance(v, int | float | str))
        log(f"[{name}] done in {seconds:.1f}s: {line}")
    return results


def _run_tracked(ctx: Context, stages: list[str], log) -> dict[str, dict[str, Any]]:
    """`run_stages`, then the parent run ends FINISHED, or FAILED if a stage raised."""
    try:
        results = run_stages(ctx, stages, log)
    except BaseException as e:
        ctx.tracker.end("FAILED")
        if isinstance(e, OSError) and not e.filename:  # a full disk: say where (cli)
            e.kdl_path = str(ctx.run_dir)
        raise
    ctx.tracker.end("FINISHED")
    return results


def run_pipeline(cfg: ExperimentConfig, stages: list[str] | None = None, log=print,
                 callbacks: list[keras.callbacks.Callback] = (), dist=None
                 ) -> tuple[Path, dict[str, dict[str, Any]], Tracker]:
    """Train/export/... as the recipe says. Raises StageFailed on a failed stage.

    `callbacks` are extra Keras callbacks for the train stage's `fit`.
    The run directory and everything written to it stay on failure; the MLflow
    parent run is then marked FAILED.

    `dist` is the `kdl.backend.distribution.setup` of `cfg.train.distribution`
    (made here when None). Of several processes only process 0 writes the run
    directory and tracks; the others train (their part of every batch) in a
    scratch directory that is removed, untracked, and stop after `fit`.
    """
    from kdl.backend import distribution

    stages = stages or cfg.stages
    dist = dist or distribution.setup(cfg.train.distribution)
    if not dist.is_chief:
        return _run_worker(cfg, dist, callbacks)
    state: dict[str, Any] = {"callbacks": list(callbacks)}
    if "train" in stages:  # bad data or a model that cannot take it: before anything exists
        state["splits"] = check_model_takes_data(cfg)
    if cfg.tracking.uri:  # its user:password never reaches a file, a param or the screen
        cfg.tracking.uri = strip_credentials(cfg.tracking.uri)
    run_dir = new_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    tracker = Tracker(cfg.tracking, cfg.name)
    tags = {**environment_tags(), "recipe": cfg.name, "run_dir": run_label(run_dir)}
    tracker.start(run_dir.name, tags)
    tracker.log_params({**flatten(to_dict(cfg)), **dist.params()})
    atomic_write_json(run_dir / "run.json", {"mlflow_run_id": tracker.parent_id,
                                             "tracking_uri": tracker.uri,
                                             "experiment": tracker.experiment,
                                             "backend": keras.backend.backend()})
    log(f"run directory: {run_dir}")
    ctx = Context(cfg, run_dir, tracker, {**state, "distribution": dist})
    return run_dir, _run_tracked(ctx, stages, log), tracker


def reopen(run_dir: Path, overrides: list[str] = ()
           ) -> tuple[ExperimentConfig, Path, str | None]:
    """An earlier run: its config (with `overrides`), resolved directory, MLflow parent id."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a kdl run directory (no config.yaml); "
                                "RUN= takes a directory under saved_models/<experiment>/")
    cfg = load_run_config(run_dir / "config.yaml", overrides)
    info = run_dir / "run.json"
    parent = json.loads(info.read_text()).get("mlflow_run_id") if info.is_file() else None
    return cfg, run_dir, parent


def continue_run(run_dir: Path, stages: list[str] | None = None, overrides: list[str] = (),
                 *, resume: bool = False, log=print
                 ) -> tuple[Path, dict[str, dict[str, Any]], Tracker]:
    """Run `stages` (default: the run's own) again in an earlier run directory.

    Under the run's MLflow parent run when it has one (else a new parent run),
    which ends FINISHED or FAILED like a new run's. `resume=True` continues
    training from `checkpoints/latest` and refuses, before any work, a run
    without checkpoints.
    """
    cfg, run_dir, parent = reopen(run_dir, overrides)
    stages = stages or cfg.stages
    state: dict[str, Any] = {"resume": True} if resume else {}
    if resume and "train" in stages:  # fail before any work when there is nothing to resume
        toolkit.checkpoint_dir(Context(cfg, run_dir, None, state=state))
    if "train" in stages:  # the checkpoint is loaded inside the run's distribution scope
        from kdl.backend import distribution

        state["distribution"] = dist = distribution.setup(cfg.train.distribution)
        if not dist.is_chief:  # process k > 0 of a resumed multi-process run
            return _run_worker(cfg, dist, (), resume_from=run_dir if resume else None)
    tracker = Tracker(cfg.tracking, cfg.name)
    close_stale(run_dir, tracker, parent, log)
    if resume:
        tracker.start(f"{run_dir.name}-resumed", {"resumed_from": run_dir.name},
                      parent_id=parent)
        log(f"resuming {run_dir}")
    else:
        tracker.start(run_dir.name, {}, parent_id=parent)
    return run_dir, _run_tracked(Context(cfg, run_dir, tracker, state), stages, log), tracker


def _run_worker(cfg: ExperimentConfig, dist, callbacks, resume_from: Path | None = None
                ) -> tuple[Path, dict, Tracker]:
    """Process k > 0 of a distributed run: the train stage's `fit`, nothing written, no MLflow.
    `resume_from`: the run directory whose checkpoints it resumes from (read only)."""
    import dataclasses
    import shutil
    import tempfile

    from pipelines.stages import train

    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    scratch = Path(tempfile.mkdtemp(prefix=f"kdl-process{dist.process_id}-"))
    tracker = Tracker(cfg.tracking, cfg.name)
    state = {"callbacks": list(callbacks), "distribution": dist}
    if resume_from is not None:
        state.update(resume=True, checkpoints_of=resume_from)
    ctx = Context(cfg, scratch, tracker, state)
    try:
        return scratch, {"train": train.run(ctx)}, tracker
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# What a killed stage leaves in its run directory (export/quantize work dirs, atomic temps).
STALE = (".export-work-*", ".quantize-work-*", ".*.tmp")


def close_stale(run_dir: Path, tracker: Tracker, parent: str | None, log=print) -> None:
    """Before a run directory is reopened (export, bench, evaluate, --resume): stage runs
    of its MLflow parent still RUNNING (a killed process) end KILLED, and the work and
    temporary directories a killed stage left in it are removed. A run directory is used
    by one invocation at a time, so whatever is there now is stale."""
    import shutil

    for pattern in STALE:
        for p in run_dir.glob(pattern):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            log(f"removed stale {p.name} (left by a killed run)")
    if parent is None or not tracker.enabled:
        return
    if tracker.kill_stale_children(parent):
        log(f"marked stale RUNNING stage runs of {parent} KILLED")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(run_dir: Path, results: dict[str, dict[str, Any]], tracker: Tracker) -> str:
    rows = [(stage, k, _fmt(v)) for stage, r in results.items() for k, v in r.items()
            if isinstance(v, int | float | str)]
    rows += [("run", "directory", str(run_dir)),
             ("run", "mlflow run id", tracker.parent_id or
              (f"(not tracked: {tracker.error})" if tracker.error else "(tracking disabled)")),
             ("run", "mlflow store", tracker.uri)]
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    lines = [f"{'stage':<{w1}}  {'figure':<{w2}}  value", f"{'-' * w1}  {'-' * w2}  -----"]
    lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
