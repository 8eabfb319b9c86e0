"""Run a recipe's stages in order, in a new run directory, under one MLflow parent run."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from kdl.config import ExperimentConfig, flatten, save_config, to_dict
from kdl.io import atomic_write_json
from pipelines.tracking import PROJECT_ROOT, Tracker, environment_tags


class StageFailed(RuntimeError):
    """A stage that ran and failed (diverged, missed a threshold). Exit code 1."""


@dataclass
class Context:
    """What a stage gets: the config, its run directory, the tracker, shared state."""

    cfg: ExperimentConfig
    run_dir: Path
    tracker: Tracker
    state: dict[str, Any] = field(default_factory=dict)


def stage_functions():
    from pipelines.stages import bench, distill, export, prune, quantize, train

    return {"train": train.run, "distill": distill.run, "prune": prune.run,
            "quantize": quantize.run, "export": export.run, "bench": bench.run}


def output_root(cfg: ExperimentConfig) -> Path:
    root = Path(cfg.output_dir)
    return root if root.is_absolute() else PROJECT_ROOT / root


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """`<output_dir>/<experiment>/<timestamp>-<backend>-<random>`; never an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{keras.backend.backend()}-{secrets.token_hex(2)}"
    path = output_root(cfg) / (cfg.tracking.experiment or cfg.name) / name
    path.mkdir(parents=True, exist_ok=False)
    return path


def run_stages(ctx: Context, stages: list[str], log=print) -> dict[str, dict[str, Any]]:
    """Run `stages` in order; each in its own nested MLflow run. Returns their summaries."""
    funcs = stage_functions()
    results: dict[str, dict[str, Any]] = {}
    for name in stages:
        start = time.perf_counter()
        with ctx.tracker.stage(name):
            results[name] = funcs[name](ctx)
        seconds = time.perf_counter() - start
        line = ", ".join(f"{k}={_fmt(v)}" for k, v in results[name].items()
                         if isinstance(v, int | float | str))
        log(f"[{name}] done in {seconds:.1f}s: {line}")
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
    run_dir = new_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    tracker = Tracker(cfg.tracking, cfg.name)
    tags = {**environment_tags(), "recipe": cfg.name, "run_dir": str(run_dir)}
    tracker.start(run_dir.name, tags)
    tracker.log_params({**flatten(to_dict(cfg)), **dist.params()})
    atomic_write_json(run_dir / "run.json", {"mlflow_run_id": tracker.parent_id,
                                             "tracking_uri": tracker.uri,
                                             "experiment": tracker.experiment,
                                             "backend": keras.backend.backend()})
    log(f"run directory: {run_dir}")
    ctx = Context(cfg, run_dir, tracker, {"callbacks": list(callbacks), "distribution": dist})
    try:
        results = run_stages(ctx, stages, log)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_dir, results, tracker


def _run_worker(cfg: ExperimentConfig, dist, callbacks) -> tuple[Path, dict, Tracker]:
    """Process k > 0 of a distributed run: the train stage's `fit`, nothing written, no MLflow."""
    import dataclasses
    import shutil
    import tempfile

    from pipelines.stages import train

    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    scratch = Path(tempfile.mkdtemp(prefix=f"kdl-process{dist.process_id}-"))
    tracker = Tracker(cfg.tracking, cfg.name)
    ctx = Context(cfg, scratch, tracker, {"callbacks": list(callbacks), "distribution": dist})
    try:
        return scratch, {"train": train.run(ctx)}, tracker
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
