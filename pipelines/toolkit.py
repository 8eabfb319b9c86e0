"""Pipeline glue for the training toolkit: checkpoints, sanity check, LR finder, callbacks.

Thin over `kdl` (docs/training.md): each function takes the resolved config
and does one thing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from kdl import training
from kdl.backend import keras_private
from kdl.callbacks import GradientStats
from kdl.callbacks.checkpoint import latest_checkpoint
from kdl.io import atomic_write_json
from kdl.lr_find import lr_find as sweep
from kdl.lr_find import plot_lr_find
from kdl.models import build_model
from kdl.registry import CALLBACKS
from kdl.sanity import overfit_one_batch
from kdl.schedules import plot_schedule
from pipelines.config import ExperimentConfig, experiment_dir
from pipelines.stages.common import load_data


def checkpoint_dir(ctx) -> Path | None:
    """`<run_dir>/checkpoints` when the recipe checkpoints; refuses a resume without any."""
    if not ctx.cfg.train.checkpoint:
        if ctx.state.get("resume"):
            raise FileNotFoundError(
                f"{ctx.run_dir} was trained without checkpoints (train.checkpoint=false); "
                "nothing to resume. Re-run with --set train.checkpoint=true")
        return None
    # process k > 0 of a resumed multi-process run trains in a scratch directory but
    # reads the checkpoints of the run it resumes (process 0 alone writes them)
    directory = Path(ctx.state.get("checkpoints_of", ctx.run_dir)) / "checkpoints"
    if ctx.state.get("resume") and latest_checkpoint(directory) is None:
        raise FileNotFoundError(f"{directory} holds no checkpoint to resume from")
    return directory


def train_callbacks(ctx, splits) -> list[keras.callbacks.Callback]:
    """Gradient statistics and the recipe's named callbacks (`train.callbacks`)."""
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
    lr = keras_private.learning_rate_schedule(model.optimizer)
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return
    path = plot_schedule(lr, max(total_steps, 1), str(ctx.run_dir / "lr_schedule.png"),
                         title=f"{ctx.cfg.train.schedule} ({total_steps} steps)")
    ctx.tracker.log_artifact(path)


def data_and_model(cfg: ExperimentConfig):
    """Seeded data splits and the compiled model of a recipe (sanity, lr-find, tune)."""
    training.prepare(cfg.train)
    splits = load_data(cfg)
    model = build_model(cfg.model.name, splits.input_shape, splits.num_outputs,
                        task=splits.task, preset=cfg.model.preset, **cfg.model.params)
    steps = math.ceil(len(splits.train) / cfg.data.batch_size)
    training.compile_for(model, splits.task, cfg.train, steps)
    return splits, model


def sanity(cfg: ExperimentConfig, log=print) -> bool:
    """Overfit one batch of the recipe's data with its model; True when it passes."""
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
    splits, model = data_and_model(cfg)
    result = sweep(model, splits.train.x, splits.train.y, min_lr=min_lr, max_lr=max_lr,
                   num_steps=num_steps, batch_size=cfg.data.batch_size, seed=cfg.train.seed)
    out_dir = out_dir or experiment_dir(cfg) / f"lr_find-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, str(out_dir / "lr_find.png"))
    atomic_write_json(out_dir / "lr_find.json", result.to_dict())
    log(f"lr-find: suggested learning rate {result.suggestion:.3g} "
        f"(steepest descent of the smoothed loss; plot {out_dir / 'lr_find.png'})")
    log(f"use it: --set train.learning_rate={result.suggestion:.3g}")
    return {"suggestion": result.suggestion, "dir": str(out_dir)}
