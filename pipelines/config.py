"""The experiment config: defaults < recipe YAML < `--set a.b=c` overrides.

The library's sections (`data`, `model`, `train`) and its strict loader come
from `kdl.config`; the experiment around them lives here: the stage table and
its order rules, and the sections of the pipeline (prune, quantize, distill,
export, bench, tracking, tune). Loading is strict; `validate` fails before any
work, naming the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdl.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    check_column,
    check_name,
    check_preset,
    close_matches,
    dataset_inputs,
    flatten,
    from_mapping,
    merge_override,
    parse_override,
    takes_raw_pixels,
    to_dict,
    validate_sections,
    yaml_load,
)
from kdl.export.formats import FORMATS
from kdl.io import atomic_write_text
from kdl.registry import MODELS

__all__ = ["ConfigError", "ExperimentConfig", "STAGES", "flatten", "from_dict", "load_config",
           "save_config", "to_dict", "validate"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


# ----------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """A row of the stage table; its code is `pipelines/stages/<name>.py` (`run(ctx)`).

    `after` maps a stage that must run earlier (when both are run) to why.
    """

    doc: str
    after: dict[str, str] = field(default_factory=dict)


_NEEDS_TRAINED = {"train": "needs the trained model: put it after train"}

# The stage table: its keys are the stages, in their usual order.
STAGES: dict[str, Stage] = {
    "train": Stage("data -> model -> fit -> evaluate -> model.keras"),
    "distill": Stage("a small student learns from the trained teacher", _NEEDS_TRAINED),
    "prune": Stage("fine-tune under magnitude pruning, strip", _NEEDS_TRAINED),
    "quantize": Stage("QAT, TFLite fp32/int8 variants, the compression report",
                      {**_NEEDS_TRAINED,
                       "prune": "after prune (QAT keeps the pruning masks)"}),
    "export": Stage("every configured format, verified against the Keras model; the bundle",
                    {**_NEEDS_TRAINED,
                     **{s: f"exports what {s} made: put it after {s}"
                        for s in ("distill", "prune", "quantize")}}),
    "evaluate": Stage("per-class metrics of every model that runs here, calibration, "
                      "explanations, robustness, fairness",
                      {**_NEEDS_TRAINED,
                       "export": "after export (it scores the exported files and writes "
                                 "the temperature into the bundle)",
                       "quantize": "after quantize (it scores the compressed models)"}),
    "bench": Stage("latency, throughput, size and memory of the exported files",
                   {"export": "measures the exported files: put it after export"}),
}


def check_stages(stages: list[str]) -> None:
    """Every stage is in the table, and the table's order rules hold."""
    for i, stage in enumerate(stages):
        if stage not in STAGES:
            raise ConfigError(f"stages[{i}]: unknown stage {stage!r}."
                              f"{close_matches(stage, STAGES)} Available: {', '.join(STAGES)}.")
    order = {name: i for i, name in enumerate(stages)}
    for name, stage in STAGES.items():
        for earlier, why in stage.after.items():
            if name in order and earlier in order and order[name] < order[earlier]:
                raise ConfigError(f"stages: {name} {why}")


# ----------------------------------------------------------------------------- sections


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["saved_model", "tflite_fp32"])
    # Per-format overrides of the verification thresholds, e.g.
    # {"tflite_fp32": {"max_abs_diff": 1e-4, "min_top1_agreement": 1.0}}.
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    allow_flex_ops: bool = False  # allow SELECT_TF_OPS (TensorFlow ops) in .tflite files
    representative_samples: int = 200  # full-int8 calibration examples (training split)
    # The mobile bundle (<run>/bundle/): which .tflite formats go in (None: every exported
    # tflite_* format), how many golden examples (from the test split) it carries.
    bundle: list[str] | None = None
    golden_examples: int = 8
    # tflite_int8's input: int8 (quantized float input) or uint8 (raw camera pixels, scale 1,
    # zero point 0: the model must take unnormalized pixels, data.normalize=false).
    input_dtype: Literal["int8", "uint8"] = "int8"


@dataclass
class EvaluateConfig:
    """The evaluate stage (docs/evaluate.md). Defaults keep it cheap: a few examples
    explained, a few attack steps."""

    # Exported formats to score beside the Keras model; None: every exported file that
    # runs here (LiteRT, ONNX, SavedModel).
    formats: list[str] | None = None
    calibration_bins: int = 15
    misclassified: int = 16  # images in the misclassified grid (images only)
    explain_examples: int = 4  # test examples explained (0 skips explanations)
    ig_steps: int = 64
    ig_baselines: list[Literal["zero", "blurred", "random"]] = field(
        default_factory=lambda: ["zero", "blurred"])  # "blurred" applies to images only
    smoothgrad_samples: int = 8
    gradcam_layer: str | None = None  # None: the last convolution layer
    permutation_repeats: int = 5  # tabular permutation importance
    shap_examples: int = 10  # tabular SHAP values (the kdl[explain] extra); 0 skips
    robustness_examples: int = 200  # test examples attacked (0 skips robustness)
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.4, 0.8])
    pgd_steps: int = 3
    noise_sigmas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    sensitive: str | None = None  # a side column of the dataset: fairness per group
    positive_label: int = 1  # the favourable outcome for fairness (selection rate)


@dataclass
class BenchConfig:
    threads: list[int] = field(default_factory=lambda: [1, 2])  # LiteRT (XNNPACK) threads
    # Sized so that bench stays under 15% of the default `make run` (docs/performance.md).
    budget_s: float = 0.1  # timed seconds per row at batch 1 (more while the median drifts)
    min_reps: int = 30  # timed calls per row at least
    batch: int = 32  # throughput batch size; 0 skips throughput
    throughput_budget_s: float = 0.05


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str | None = None  # default: the recipe's name
    register_model: bool = True
    model_name: str | None = None  # registry name; default "kdl-<experiment>"


@dataclass
class PruneConfig:
    engine: Literal["native", "tfmot"] = "native"
    schedule: Literal["constant", "polynomial_decay"] = "polynomial_decay"
    initial_sparsity: float = 0.0  # polynomial_decay only
    final_sparsity: float = 0.8  # the target (constant: the sparsity throughout)
    begin_step: int = 0
    end_step: int | None = None  # default: 70% of the fine-tuning steps
    frequency: int = 10
    power: float = 3.0
    scope: Literal["layer", "global"] = "layer"
    block_size: list[int] = field(default_factory=lambda: [1, 1])  # e.g. [1, 4]
    m_by_n: list[int] | None = None  # [2, 4]: 2:4 structured sparsity (native only)
    exclude: list[str] = field(default_factory=list)  # regexes of layer names left dense
    epochs: int = 10  # fine-tuning epochs under pruning
    learning_rate: float = 1e-3


@dataclass
class QuantizeConfig:
    qat: bool = True  # fine-tune with fake quantization before the int8 conversion
    engine: Literal["native", "tfmot"] = "native"
    epochs: int = 3
    learning_rate: float = 1e-4
    representative_samples: int = 200  # drawn from the training split
    float_io: bool = False  # int8 model with float input/output
    keras_mode: Literal["none", "int8", "int4"] = "none"  # also Keras model.quantize(mode)


@dataclass
class DistillConfig:
    student: str = "mlp"  # a name in kdl.registry.MODELS
    student_preset: str = "tiny"
    student_params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.1  # weight of the hard-label loss
    epochs: int = 30
    learning_rate: float = 3e-3


@dataclass
class TuneConfig:
    """`pipelines tune`: an Optuna search over dotted config keys (docs/training.md)."""

    trials: int = 20  # trials run by this process (several processes share one storage)
    metric: str = "val_loss"  # an epoch metric of training, reported for pruning
    direction: Literal["minimize", "maximize"] = "minimize"
    # {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": true},
    #  "data.batch_size": {"type": "categorical", "choices": [16, 32, 64]}, ...}
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    storage: str | None = None  # Optuna RDB URL; default sqlite in <output_dir>/<name>/
    study_name: str | None = None  # default "<name>-tune"
    pruner_warmup_epochs: int = 2  # median pruning starts after this many epochs
    pruner_startup_trials: int = 2  # ... and after this many complete trials
    seed: int = 0  # the sampler's seed


@dataclass
class ExperimentConfig:
    name: str = "digits_cnn"
    output_dir: str = "saved_models"
    stages: list[str] = field(default_factory=lambda: ["train", "export"])  # + "bench"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


# ----------------------------------------------------------------------------- loading


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build an `ExperimentConfig` from a nested dict (strict, see the module doc)."""
    return from_mapping(ExperimentConfig, data or {})


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str) -> Path:
    """A recipe name (`pipelines/recipes/<name>.yaml`) or a path to a YAML file."""
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"recipe file {recipe!r} does not exist")
        return p
    p = RECIPES_DIR / f"{recipe}.yaml"
    if not p.is_file():
        names = available_recipes()
        raise ConfigError(f"unknown recipe {recipe!r}.{close_matches(recipe, names)} "
                          f"Available: {', '.join(names)} (or a path to a .yaml file).")
    return p


def load_config(recipe: str | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Defaults < recipe YAML < overrides, then `validate`."""
    data: dict[str, Any] = {}
    if recipe is not None:
        path = recipe_path(recipe)
        try:
            data = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping of config sections")
        data.setdefault("name", path.stem)
    for text in overrides:
        merge_override(data, *parse_override(text))
    cfg = from_dict(data)
    validate(cfg)
    return cfg


def load_run_config(path: Path, overrides: list[str] = ()) -> ExperimentConfig:
    """A run's saved `config.yaml`, with `--set` overrides on top, validated."""
    data = to_dict(from_dict(yaml_load(path.read_text())))
    for text in overrides:
        merge_override(data, *parse_override(text))
    cfg = from_dict(data)
    validate(cfg)
    return cfg


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def output_root(cfg: ExperimentConfig) -> Path:
    root = Path(cfg.output_dir)
    return root if root.is_absolute() else PROJECT_ROOT / root


def experiment_dir(cfg: ExperimentConfig) -> Path:
    """`<output_dir>/<experiment>`: where this experiment's runs, sweeps and studies go."""
    return output_root(cfg) / (cfg.tracking.experiment or cfg.name)


# ----------------------------------------------------------------------------- checks


def validate(cfg: ExperimentConfig) -> None:
    """The library's checks of data/model/train, then the experiment's."""
    validate_sections(cfg.data, cfg.model, cfg.train, cfg.tokenizer)
    check_stages(cfg.stages)
    _check_export(cfg.export)
    _check_evaluate(cfg)
    if cfg.export.input_dtype == "uint8" and (
            "tflite_int8" not in cfg.export.formats or cfg.data.normalize):
        raise ConfigError("export.input_dtype=uint8 feeds raw pixels to tflite_int8: it needs "
                          "tflite_int8 in export.formats and data.normalize=false (got "
                          f"formats {cfg.export.formats}, normalize {cfg.data.normalize})")
    b = cfg.bench
    if not b.threads or any(t < 1 for t in b.threads):
        raise ConfigError(f"bench.threads must list thread counts >= 1 (got {b.threads})")
    if b.budget_s <= 0 or b.throughput_budget_s <= 0 or b.min_reps < 2 or b.batch < 0:
        raise ConfigError("bench: budget_s and throughput_budget_s must be > 0, min_reps >= 2, "
                          "batch >= 0 (0 skips throughput)")
    inputs = dataset_inputs(cfg.data)
    others = [s for s in cfg.stages if s != "train"]
    if inputs > 1 and others:
        raise ConfigError(f"stages: dataset {cfg.data.name!r} feeds {inputs} inputs, which only "
                          f"the train stage takes (not {', '.join(others)}): set stages=[train]")
    if takes_raw_pixels(cfg.model) and "quantize" in cfg.stages and cfg.quantize.qat:
        raise ConfigError(f"model {cfg.model.name!r} has depthwise convolutions, which native "
                          "QAT does not fake-quantize: set quantize.qat=false (post-training "
                          "int8)")
    validate_compression(cfg)


def _check_export(e: ExportConfig) -> None:
    for i, fmt in enumerate(e.formats):
        if fmt not in FORMATS:
            raise ConfigError(f"export.formats[{i}]: unknown format {fmt!r}."
                              f"{close_matches(fmt, FORMATS)} Available: {', '.join(FORMATS)}.")
    for fmt, limits in e.thresholds.items():
        if fmt not in FORMATS:
            raise ConfigError(f"export.thresholds: unknown format {fmt!r}."
                              f"{close_matches(fmt, FORMATS)}")
        for k in limits:
            allowed = ("max_abs_diff", "min_top1_agreement", "max_metric_drop")
            if k not in allowed:
                raise ConfigError(f"export.thresholds.{fmt}: unknown key {k!r}."
                                  f"{close_matches(k, allowed)} Allowed: {', '.join(allowed)}.")
    for i, fmt in enumerate(e.bundle or []):
        if fmt not in e.formats or not FORMATS[fmt].is_tflite:
            tflite = [f for f in e.formats if FORMATS[f].is_tflite]
            raise ConfigError(f"export.bundle[{i}]: {fmt!r} is not an exported .tflite format; "
                              f"choose from export.formats: {', '.join(tflite) or 'none'}")
    if e.golden_examples < 1:
        raise ConfigError(f"export.golden_examples must be >= 1 (got {e.golden_examples})")


def _check_evaluate(cfg: ExperimentConfig) -> None:
    e = cfg.evaluate
    counts = {"calibration_bins": e.calibration_bins, "ig_steps": e.ig_steps,
              "smoothgrad_samples": e.smoothgrad_samples, "pgd_steps": e.pgd_steps,
              "permutation_repeats": e.permutation_repeats}
    for key, v in counts.items():
        if v < 1:
            raise ConfigError(f"evaluate.{key} must be >= 1 (got {v})")
    for key in ("misclassified", "explain_examples", "shap_examples", "robustness_examples"):
        if getattr(e, key) < 0:
            raise ConfigError(f"evaluate.{key} must be >= 0 (got {getattr(e, key)})")
    for key in ("epsilons", "noise_sigmas"):
        v = getattr(e, key)
        if (len(v) < 2 or v[0] != 0 or any(not math.isfinite(a) for a in v)
                or any(b <= a for a, b in zip(v, v[1:], strict=False))):
            raise ConfigError(f"evaluate.{key} must start at 0 and increase, with at least "
                              f"two finite values (got {v})")
    for i, fmt in enumerate(e.formats or []):
        if fmt not in cfg.export.formats:
            raise ConfigError(f"evaluate.formats[{i}]: {fmt!r} is not exported; choose from "
                              f"export.formats: {', '.join(cfg.export.formats)}")
    if e.sensitive:
        check_column(cfg.data, e.sensitive, "evaluate.sensitive")


def validate_compression(cfg: ExperimentConfig) -> None:
    """The prune/quantize/distill sections: ranges and combinations."""
    p = cfg.prune
    for key in ("initial_sparsity", "final_sparsity"):
        v = getattr(p, key)
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"prune.{key} must be in [0, 1) (got {v}); 0.8 means 80% zeros")
    if p.begin_step < 0:
        raise ConfigError(f"prune.begin_step must be >= 0 (got {p.begin_step})")
    if p.end_step is not None and p.end_step < p.begin_step:
        raise ConfigError(f"prune.end_step ({p.end_step}) is before prune.begin_step "
                          f"({p.begin_step}): set end_step >= begin_step")
    if p.frequency < 1:
        raise ConfigError(f"prune.frequency must be >= 1 (got {p.frequency})")
    if len(p.block_size) != 2 or min(p.block_size) < 1:
        raise ConfigError(f"prune.block_size must be two integers >= 1 (got {p.block_size})")
    if p.m_by_n is not None:
        if len(p.m_by_n) != 2 or not 0 < p.m_by_n[0] < p.m_by_n[1]:
            raise ConfigError(f"prune.m_by_n must be [m, n] with 0 < m < n (got {p.m_by_n})")
        if p.block_size != [1, 1]:
            raise ConfigError("prune.m_by_n and prune.block_size cannot be combined")
        if p.engine != "native":
            raise ConfigError("prune.m_by_n needs prune.engine=native")
    if p.epochs < 1:
        raise ConfigError(f"prune.epochs must be >= 1 (got {p.epochs})")
    q = cfg.quantize
    if q.epochs < 0 or q.representative_samples < 1:
        raise ConfigError("quantize.epochs must be >= 0 and quantize.representative_samples >= 1")
    d = cfg.distill
    check_name(MODELS, d.student, "distill.student")
    check_preset(d.student, d.student_preset, "distill.student_preset")
    if not d.temperature > 0 or not 0 <= d.alpha <= 1:
        raise ConfigError(f"distill.temperature must be > 0 and distill.alpha in [0, 1] "
                          f"(got {d.temperature} and {d.alpha})")
