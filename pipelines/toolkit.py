"""Pipeline glue for the training toolkit: resume, sanity check, LR finder, callbacks.

Thin over `kdl` (docs/training.md): each function takes the resolved config
and does one thing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras

from kdl.config import ExperimentConfig


def checkpoint_dir(ctx) -> Path | None:
    """`<run_dir>/checkpoints` when the recipe checkpoints; refuses a resume without any."""
    from kdl.callbacks.checkpoint import latest_checkpoint

    if not ctx.cfg.train.checkpoint:
        if ctx.state.get("resume"):
            raise FileNotFoundError(
                f"{ctx.run_dir} was trained without checkpoints (train.checkpoint=false); "
                "nothing to resume. Re-run with --set train.checkpoint=true")
        return None
    directory = ctx.run_dir / "checkpoints"
    if ctx.state.get("resume") and latest_checkpoint(directory) is None:
        raise FileNotFoundError(f"{directory} holds no checkpoint to resume from")
    return directory


def train_callbacks(ctx, splits) -> list[keras.callbacks.Callback]:
    """Gradient statistics and the recipe's named callbacks (`train.callbacks`)."""
    import kdl.callbacks  # noqa: F401  (registers callbacks)
    from kdl.callbacks import GradientStats
    from kdl.registry import CALLBACKS

    cfg, tracker = ctx.cfg.train, ctx.tracker
    out = []
    if cfg.grad_stats_every:
        probe = splits.val if len(splits.val) else splits.train
        out.append(GradientStats(
            probe.x[:64], probe.y[:64], every_n_steps=cfg.grad_stats_every,
            log_fn=lambda m, step: tracker.log_metrics({f"train/{k}": v for k, v in m.items()},
                                                       step=step)))
    for name, params in cfg.callbacks.items():
        out.append(CALLBACKS.build(name, **params))
    return out


def log_schedule_plot(ctx, model: keras.Model, total_steps: int) -> None:
    """Plot the optimizer's schedule over the run into `lr_schedule.png` and log it."""
    from kdl.schedules import plot_schedule

    lr = model.optimizer._learning_rate
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return
    path = plot_schedule(lr, max(total_steps, 1), str(ctx.run_dir / "lr_schedule.png"),
                         title=f"{ctx.cfg.train.schedule} ({total_steps} steps)")
    ctx.tracker.log_artifact(path)


def data_and_model(cfg: ExperimentConfig):
    """Seeded data splits and the compiled model of a recipe (sanity, lr-find, tune)."""
    from kdl import training
    from kdl.models import build_model
    from pipelines.stages.train import load_data

    training.prepare(cfg.train)
    splits = load_data(cfg)
    model = build_model(cfg.model.name, splits.input_shape, splits.num_outputs,
                        task=splits.task, preset=cfg.model.preset, **cfg.model.params)
    steps = math.ceil(len(splits.train) / cfg.data.batch_size)
    training.compile_for(model, splits.task, cfg.train, steps)
    return splits, model


def sanity(cfg: ExperimentConfig, log=print) -> bool:
    """Overfit one batch of the recipe's data with its model; True when it passes."""
    from kdl.sanity import overfit_one_batch

    splits, model = data_and_model(cfg)
    if splits.task != "classification":
        tolerance = 0.05 * float(splits.train.y.var())  # 5% of the variance left
    else:
        tolerance = 0.05
    r = overfit_one_batch(model, splits.train.x, splits.train.y,
                          batch_size=min(cfg.data.batch_size, 16), tolerance=tolerance,
                          raise_on_failure=False)
    log(f"sanity: overfit one batch: loss {r.initial_loss:.4g} -> {r.final_loss:.4g} "
        f"in {r.steps} steps (needs <= {tolerance:.3g}): {'PASS' if r.passed else 'FAIL'}")
    return r.passed


def lr_find(cfg: ExperimentConfig, out_dir: Path | None = None, *, min_lr: float = 1e-6,
            max_lr: float = 1.0, num_steps: int = 100, log=print) -> dict:
    """LR range test on the recipe; writes `lr_find.png` and `lr_find.json`."""
    from kdl.io import atomic_write_json
    from kdl.lr_find import lr_find as sweep
    from kdl.lr_find import plot_lr_find
    from pipelines.run import output_root

    splits, model = data_and_model(cfg)
    result = sweep(model, splits.train.x, splits.train.y, min_lr=min_lr, max_lr=max_lr,
                   num_steps=num_steps, batch_size=cfg.data.batch_size, seed=cfg.train.seed)
    out_dir = out_dir or (output_root(cfg) / (cfg.tracking.experiment or cfg.name)
                          / f"lr_find-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, str(out_dir / "lr_find.png"))
    atomic_write_json(out_dir / "lr_find.json", result.to_dict())
    log(f"lr-find: suggested learning rate {result.suggestion:.3g} "
        f"(steepest descent of the smoothed loss; plot {out_dir / 'lr_find.png'})")
    log(f"use it: --set train.learning_rate={result.suggestion:.3g}")
    return {"suggestion": result.suggestion, "dir": str(out_dir)}


def resume(run_dir: Path, stages: list[str] | None = None, log=print):
    """Continue an interrupted run in its own directory from its latest checkpoint.

    Runs `stages` (default: the run's configured stages) again; the train stage
    continues from `checkpoints/latest`.
    """
    from kdl.config import from_dict, validate, yaml_load
    from pipelines.run import Context, run_stages
    from pipelines.tracking import Tracker

    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a kdl run directory (no config.yaml)")
    cfg = from_dict(yaml_load((run_dir / "config.yaml").read_text()))
    validate(cfg)
    stages = stages or cfg.stages
    if "train" in stages:  # fail before any work when there is nothing to resume from
        checkpoint_dir(Context(cfg, run_dir, None, state={"resume": True}))
    tracker = Tracker(cfg.tracking, cfg.name)
    parent = None
    if (run_dir / "run.json").is_file():
        parent = json.loads((run_dir / "run.json").read_text()).get("mlflow_run_id")
    tracker.start(f"{run_dir.name}-resumed", {"resumed_from": run_dir.name}, parent_id=parent)
    log(f"resuming {run_dir}")
    try:
        results = run_stages(Context(cfg, run_dir, tracker, state={"resume": True}),
                             stages, log)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_dir, results, tracker
