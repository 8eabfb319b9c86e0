"""What the stages share: the context a stage gets, its failure, the data and the models.

Stages import this module and the library, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from kdl import training
from kdl.config import tokenizer_options
from kdl.data import DataSplits, load_splits, make_tf_dataset
from kdl.data.sources import IMAGE_OPTIONS
from kdl.export.litert import ExportFileError
from kdl.io import atomic_path, atomic_write_json
from kdl.registry import DATASETS
from pipelines.config import ExperimentConfig
from pipelines.tracking import Tracker


class StageFailed(RuntimeError):
    """A stage that ran and failed (diverged, missed a threshold). Exit code 1."""


@dataclass
class Context:
    """What a stage gets: the config, its run directory, the tracker, shared state."""

    cfg: ExperimentConfig
    run_dir: Path
    tracker: Tracker | None
    state: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> DataSplits:
        """The recipe's data splits, loaded once per invocation (`load_data`)."""
        if self.state.get("splits") is None:
            self.state["splits"] = load_data(self.cfg)
        return self.state["splits"]


def load_data(cfg: ExperimentConfig, cache_dir: Path | None = None) -> DataSplits:
    """The recipe's dataset, split and normalized exactly as in training (image files:
    their decoded images cached under `cache_dir` when `data.cache`; texts: the tokenizer
    learned again on the same training split, deterministically)."""
    d = cfg.data
    options = {k: v for k, v in {"path": d.path, "target": d.target, "task": d.task,
                                 "text": d.text}.items() if v is not None}
    if DATASETS.get(d.name).spec.files:
        options.update({k: getattr(d, k) for k in IMAGE_OPTIONS})
    options.update(d.params)
    return load_splits(d.name, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                       seed=d.seed, normalize=d.normalize, nonfinite=d.nonfinite,
                       augment=d.augment,
                       cache_dir=str(cache_dir) if d.cache and cache_dir else None,
                       tokenizer=tokenizer_options(d, cfg.tokenizer), **options)


def model_params(cfg: ExperimentConfig, splits: DataSplits) -> dict:
    """`model.params`, plus the learned vocabulary size for models on token ids."""
    params = dict(cfg.model.params)
    if "tokenizer" in splits.info:
        params.setdefault("vocab_size", splits.info["vocab_size"])
    return params


def check_model_takes_data(cfg: ExperimentConfig) -> DataSplits | None:
    """Load the recipe's data and build its model once on the data's shape, before a run
    directory or MLflow run exists: bad data (`DataError`) and a model that cannot take
    the data (`ConfigError`, e.g. `cnn` on `(40, 1)` sequences) stop the run there.

    Returns the splits of in-memory data for the train stage to reuse (None for image
    files, which the train stage streams with its own cache directory).
    """
    from kdl.models import build_model
    from kdl.registry import MODELS
    from pipelines.config import ConfigError

    splits = load_data(cfg)
    entry = MODELS.get(cfg.model.name)
    if not cfg.train.transfer.backbone:
        try:
            if entry.spec.custom_training:
                MODELS.build(cfg.model.name, preset=cfg.model.preset,
                             **{entry.spec.data_arg: splits.input_shape, **cfg.model.params})
            else:
                build_model(cfg.model.name, splits.input_shape, splits.num_outputs,
                            task=splits.task, preset=cfg.model.preset,
                            **model_params(cfg, splits))
        except Exception as e:  # noqa: BLE001  (any failure to build is this mismatch)
            cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ConfigError(f"model {cfg.model.name!r} cannot take data {cfg.data.name!r} "
                              f"of input shape {splits.input_shape}: {cause}. Pick a model "
                              "for this data (python -m pipelines list)") from None
        finally:
            keras.backend.clear_session()  # the train stage's model gets the same names
    return None if splits.files_report is not None else splits


def fit_data(cfg: ExperimentConfig, splits: DataSplits) -> dict:
    """`fit` arguments for a fine-tune on the training split (not augmented): the arrays,
    or for image files streamed batches (shuffled, seeded), so memory stays flat."""
    if not hasattr(splits.train, "dataset"):
        return {"x": splits.train.x, "y": splits.train.y, "batch_size": cfg.data.batch_size,
                "validation_data": (splits.val.x, splits.val.y)}
    b = cfg.data.batch_size
    return {"x": make_tf_dataset(splits.train, b, shuffle=True, seed=cfg.train.seed),
            "validation_data": make_tf_dataset(splits.val, b) if len(splits.val) else None}


def calibration_batches(splits: DataSplits, batch_size: int = 256):
    """The training inputs for batch-norm recalibration: the array, or streamed batches."""
    if hasattr(splits.train, "dataset"):
        return make_tf_dataset(splits.train, batch_size, targets=False)
    return splits.train.x


def load_keras(path: Path, missing: str) -> keras.Model:
    """A `.keras` file of the run; `missing` is the FileNotFoundError's fix when it is absent.

    A file that exists but does not load (truncated zip, unknown custom object)
    raises `ExportFileError` naming the file and the cause.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # a truncated zip, a missing custom object, ...
        raise ExportFileError(f"{path}: cannot load this .keras file "
                              f"({type(e).__name__}: {e}); train again or restore it") from None


def load_trained(ctx: Context) -> keras.Model:
    """The train stage's model (`<run_dir>/model.keras`)."""
    path = ctx.state.get("model_path") or ctx.run_dir / "model.keras"
    return load_keras(path, f"{ctx.run_dir} has no model.keras: run the train stage first")


def save_model(model: keras.Model, path: Path) -> None:
    """`model.save` through a temporary file: the path holds a whole model or nothing new."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def compile_model(model: keras.Model, task: str, learning_rate: float) -> None:
    """Adam at `learning_rate` with the task's loss and metrics (fine-tuning stages)."""
    loss, metrics = training.loss_and_metrics(task)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


def conversion_failed(out_dir: Path, stage: str, model: str, error: str,
                      crash: dict[str, Any] | None = None) -> StageFailed:
    """The stage failure for a conversion that failed or crashed the converter.

    Writes `<out_dir>/<format>.failed.json` (`<stage>.failed.json` when the
    format is not known): stage, model family, the error, and for a crash the
    exit status, signal and the converter's last words. Returns the
    `StageFailed` to raise: one message naming the format, the model and what
    the converter said last.
    """
    fmt = (crash or {}).get("format") or stage
    path = Path(out_dir) / f"{fmt}.failed.json"
    atomic_write_json(path, {"stage": stage, "model": model, "error": error, **(crash or {})})
    return StageFailed(f"{stage} of model {model!r} failed: {error} (report: {path})")
