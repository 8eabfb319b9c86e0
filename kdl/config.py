"""The typed experiment config: defaults < recipe YAML < `--set a.b=c` overrides.

Every section is a dataclass. Loading is strict: an unknown key, a value of the
wrong type, or an unknown registry name raises `ConfigError` naming the key,
the allowed values and the close matches, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config that cannot run. The message names the key and the fix."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; here it is a float, as users mean it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


# ----------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    name: str = "digits"  # a name in kdl.registry.DATASETS
    path: str | None = None  # file for the npz/csv datasets
    target: str | None = None  # csv: the target column
    task: Literal["classification", "regression"] | None = None  # npz/csv only
    params: dict[str, Any] = field(default_factory=dict)  # the dataset function's arguments
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    # True/"standardize": (x - mean) / std with training statistics; "symmetric": each
    # channel/feature to [-1, 1] by its training min and max (a tanh generator's range);
    # False: as loaded.
    normalize: Literal[True, False, "standardize", "symmetric"] = True
    batch_size: int = 64
    text: str | None = None  # text_csv: the text column (data.target is the label column)
    # Image files (image_folder, image_csv, shapes; docs/images.md): the model's input size,
    # colour, resize method and aspect-ratio policy; a tf.data file cache of the decoded
    # images in the run directory.
    image_size: list[int] = field(default_factory=lambda: [64, 64])  # [height, width]
    color: Literal["rgb", "grayscale"] = "rgb"
    resize: Literal["bilinear", "nearest"] = "bilinear"
    fit: Literal["stretch", "crop", "pad"] = "stretch"  # aspect ratio: ignore/crop/pad
    cache: bool = False
    # Keras preprocessing layers for the training split, in order:
    # [{name: RandomFlip, mode: horizontal}, {name: RandomRotation, factor: 0.1}, ...]
    augment: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TokenizerConfig:
    """Text datasets: the KerasHub tokenizer, learned on the training split (docs/text.md)."""

    kind: Literal["wordpiece", "sentencepiece", "byte_pair", "bytes"] = "wordpiece"
    vocab_size: int = 4000  # the most tokens learned (WordPiece may learn fewer)
    lowercase: bool = True
    strip_accents: bool = True  # WordPiece only
    sequence_length: int = 64  # ids per text: truncated and padded on the right (id 0)
    special_tokens: list[str] = field(  # WordPiece reserved tokens, [PAD] first (id 0)
        default_factory=lambda: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    start_token: str | None = None  # added before each text, e.g. "[CLS]" for BERT
    end_token: str | None = None  # ... and after it, e.g. "[SEP]"
    preset: str | None = None  # a local KerasHub preset or HF directory: its vocabulary


@dataclass
class ModelConfig:
    name: str = "cnn"  # a name in kdl.registry.MODELS
    preset: str = "default"
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the preset


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class ParamGroupConfig:
    """Variables whose path matches `match` (a regex, `re.search`) train at `lr_scale` x rate."""

    match: str = ""  # e.g. "^conv_" (a layer-name prefix) or "^head/"
    lr_scale: float = 1.0  # 0 freezes the group


@dataclass
class TransferPhaseConfig:
    epochs: int = 5
    learning_rate: float = 1e-3
    top_n: int = 0  # backbone layers (with weights) trainable, counted from the top
    names: list[str] = field(default_factory=list)  # ... and layers named or prefixed so
    param_groups: list[ParamGroupConfig] = field(default_factory=list)  # rates per group


@dataclass
class TransferConfig:
    """Start from a trained backbone and a new head (docs/training.md, Transfer learning)."""

    # A kdl run directory or .keras file, "keras.applications:<Name>",
    # "kerashub:<local preset dir>" or "hf:<local Hugging Face checkpoint dir>".
    backbone: str | None = None
    cut_at: str = "head"  # saved models: the layer whose input becomes the features
    dropout: float = 0.0  # before the new head
    # Phases of (what is trainable, rate, epochs); empty: train the whole model as usual
    # (train.epochs, train.learning_rate, train.param_groups).
    phases: list[TransferPhaseConfig] = field(default_factory=list)


@dataclass
class DistributionConfig:
    """Training on several devices or processes (docs/scale.md). JAX: `keras.distribution`;
    TensorFlow: `tf.distribute` (data parallel only); PyTorch: not supported (Keras has no
    distribution API for it)."""

    kind: Literal["none", "data_parallel", "model_parallel"] = "none"
    devices: int | Literal["all"] = "all"  # devices of this process to use (all processes')
    # model_parallel: the device mesh, axis name -> size in order; the first axis takes the
    # batch (e.g. {batch: 1, model: 2}). data_parallel: optional, one axis.
    mesh: dict[str, int] = field(default_factory=dict)
    # model_parallel: variable path regex (re.search, e.g. "dense.*kernel") -> one mesh axis
    # or null per dimension of the variable; variables matching none are replicated.
    layout: dict[str, list[str | None]] = field(default_factory=dict)
    # Several processes (multi-host): process 0's "host:port", the process count and this
    # process's id. Unset: $KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID,
    # $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID, SLURM's, $TF_CONFIG.
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclass
class TrainConfig:
    epochs: int = 30
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adamw"
    learning_rate: float = 3e-3  # the peak rate of the schedule
    weight_decay: float = 1e-4  # adamw only
    beta_1: float | None = None  # adam/adamw first-moment decay (None: Keras's 0.9; GANs: 0.5)
    schedule: str = "warmup_cosine"  # a name in kdl.registry.SCHEDULES, or "constant"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    clipnorm: float | None = 1.0  # per-variable gradient norm clip
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    seed: int = 42
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    verbose: Literal["auto", 0, 1, 2] = "auto"
    # PyTorch backend: CPU intra-op threads (None: half the cores, see kdl.backend.torch_threads)
    torch_threads: int | None = None
    # The toolkit (docs/training.md).
    ema_momentum: float | None = None  # keep an EMA of the weights; fit ends on it
    accumulation_steps: int | None = None  # apply the mean gradient of N batches
    grad_stats_every: int | None = None  # log per-layer gradient norms every N steps
    checkpoint: bool = False  # resumable checkpoints each epoch (`run --resume <run_dir>`)
    checkpoint_every_steps: int | None = None  # ... and every N steps
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # CALLBACKS name: params
    # Per-group learning rates (discriminative fine-tuning), first match wins:
    # [{match: "^conv_", lr_scale: 0.1}, {match: "^head/", lr_scale: 1.0}].
    param_groups: list[ParamGroupConfig] = field(default_factory=list)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    distribution: DistributionConfig = field(default_factory=DistributionConfig)


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
class BenchConfig:
    threads: list[int] = field(default_factory=lambda: [1, 2])  # LiteRT (XNNPACK) threads
    # Sized so that bench stays under 15% of the default `make run` (docs/performance.md).
    budget_s: float = 0.25  # timed seconds per row at batch 1 (more while the median drifts)
    min_reps: int = 30  # timed calls per row at least
    batch: int = 32  # throughput batch size; 0 skips throughput
    throughput_budget_s: float = 0.15


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


STAGES = ("train", "distill", "prune", "quantize", "export", "bench")


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
    bench: BenchConfig = field(default_factory=BenchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


# ----------------------------------------------------------------------------- loading

RECIPES_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "recipes"


def _close(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value in args and type(value) is type(args[list(args).index(value)]):
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed.{_close(value, args)} "
                          f"Allowed: {', '.join(repr(a) for a in args)}.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _from_dict(cls, data: dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown key {prefix}{k!r}.{_close(k, names)} "
                          f"Allowed keys of {prefix.rstrip('.') or 'the config'}: "
                          f"{', '.join(names)}.")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build an `ExperimentConfig` from a nested dict (strict, see module doc)."""
    return _from_dict(ExperimentConfig, data or {})


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
        raise ConfigError(f"unknown recipe {recipe!r}.{_close(recipe, names)} "
                          f"Available: {', '.join(names)} (or a path to a .yaml file).")
    return p


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.epochs=3"` -> `(["train", "epochs"], 3)`; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return path, yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None


def merge_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:i + 1])} "
                              "is not a section")
        node = child
    node[path[-1]] = value


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


def _check_name(registry, name: str, key: str) -> None:
    if name not in registry:
        names = registry.names()
        raise ConfigError(f"{key}: unknown {registry.kind} {name!r}.{_close(name, names)} "
                          f"Available: {', '.join(names)}.")


def _check_param_groups(groups: list[ParamGroupConfig], key: str) -> None:
    import re

    for i, g in enumerate(groups):
        if not g.match:
            raise ConfigError(f"{key}[{i}].match is required: a regex found in variable paths, "
                              "e.g. '^conv_' or '^head/'")
        try:
            re.compile(g.match)
        except re.error as e:
            raise ConfigError(f"{key}[{i}].match {g.match!r} is not a regular expression: "
                              f"{e}") from None
        if g.lr_scale < 0:
            raise ConfigError(f"{key}[{i}].lr_scale must be >= 0 (0 freezes), got {g.lr_scale}")


def validate(cfg: ExperimentConfig) -> None:
    """Checks that need the registries or relate several keys."""
    import kdl.data  # noqa: F401  (registers datasets)
    import kdl.models  # noqa: F401  (registers models)
    import kdl.schedules  # noqa: F401  (registers schedules)
    from kdl.export.formats import FORMATS
    from kdl.registry import DATASETS, MODELS, SCHEDULES

    _check_name(DATASETS, cfg.data.name, "data.name")
    _check_name(MODELS, cfg.model.name, "model.name")
    presets = sorted(MODELS.get(cfg.model.name).presets)
    if cfg.model.preset not in presets:
        raise ConfigError(f"model.preset: model {cfg.model.name!r} has no preset "
                          f"{cfg.model.preset!r}.{_close(cfg.model.preset, presets)} "
                          f"Available: {', '.join(presets)}.")
    if cfg.train.schedule != "constant":
        _check_name(SCHEDULES, cfg.train.schedule, "train.schedule")
    import kdl.callbacks  # noqa: F401  (registers callbacks)
    from kdl.registry import CALLBACKS

    for name in cfg.train.callbacks:
        _check_name(CALLBACKS, name, "train.callbacks")
    if "reduce_lr_on_plateau" in cfg.train.callbacks and cfg.train.schedule != "constant":
        raise ConfigError("train.callbacks.reduce_lr_on_plateau sets the learning rate, which "
                          f"schedule {cfg.train.schedule!r} owns: set train.schedule=constant")
    if cfg.train.checkpoint_every_steps is not None and not cfg.train.checkpoint:
        raise ConfigError("train.checkpoint_every_steps needs train.checkpoint=true")
    _check_param_groups(cfg.train.param_groups, "train.param_groups")
    _check_distribution(cfg)
    t = cfg.train.transfer
    for i, phase in enumerate(t.phases):
        key = f"train.transfer.phases[{i}]"
        if phase.epochs < 1 or phase.learning_rate <= 0 or phase.top_n < 0:
            raise ConfigError(f"{key}: epochs must be >= 1, learning_rate > 0 and top_n >= 0 "
                              f"(got {phase.epochs}, {phase.learning_rate}, {phase.top_n})")
        _check_param_groups(phase.param_groups, f"{key}.param_groups")
    if t.phases and not t.backbone:
        raise ConfigError("train.transfer.phases need train.transfer.backbone (a kdl run "
                          "directory, .keras file, keras.applications:, kerashub: or hf: source)")
    if t.phases and cfg.train.checkpoint:
        raise ConfigError("train.transfer.phases cannot be checkpointed and resumed: set "
                          "train.checkpoint=false (or drop the phases)")
    for i, stage in enumerate(cfg.stages):
        if stage not in STAGES:
            raise ConfigError(f"stages[{i}]: unknown stage {stage!r}.{_close(stage, STAGES)} "
                              f"Available: {', '.join(STAGES)}.")
    for i, fmt in enumerate(cfg.export.formats):
        if fmt not in FORMATS:
            raise ConfigError(f"export.formats[{i}]: unknown format {fmt!r}."
                              f"{_close(fmt, FORMATS)} Available: {', '.join(FORMATS)}.")
    for fmt, limits in cfg.export.thresholds.items():
        if fmt not in FORMATS:
            raise ConfigError(f"export.thresholds: unknown format {fmt!r}.{_close(fmt, FORMATS)}")
        for k in limits:
            allowed = ("max_abs_diff", "min_top1_agreement", "max_metric_drop")
            if k not in allowed:
                raise ConfigError(f"export.thresholds.{fmt}: unknown key {k!r}."
                                  f"{_close(k, allowed)} Allowed: {', '.join(allowed)}.")
    for i, fmt in enumerate(cfg.export.bundle or []):
        if fmt not in cfg.export.formats or not fmt.startswith("tflite"):
            tflite = [f for f in cfg.export.formats if f.startswith("tflite")]
            raise ConfigError(f"export.bundle[{i}]: {fmt!r} is not an exported .tflite format; "
                              f"choose from export.formats: {', '.join(tflite) or 'none'}")
    if cfg.export.input_dtype == "uint8" and (
            "tflite_int8" not in cfg.export.formats or cfg.data.normalize):
        raise ConfigError("export.input_dtype=uint8 feeds raw pixels to tflite_int8: it needs "
                          "tflite_int8 in export.formats and data.normalize=false (got "
                          f"formats {cfg.export.formats}, normalize {cfg.data.normalize})")
    if cfg.export.golden_examples < 1:
        raise ConfigError(f"export.golden_examples must be >= 1 (got {cfg.export.golden_examples})")
    b = cfg.bench
    if not b.threads or any(t < 1 for t in b.threads):
        raise ConfigError(f"bench.threads must list thread counts >= 1 (got {b.threads})")
    if b.budget_s <= 0 or b.throughput_budget_s <= 0 or b.min_reps < 2 or b.batch < 0:
        raise ConfigError("bench: budget_s and throughput_budget_s must be > 0, min_reps >= 2, "
                          "batch >= 0 (0 skips throughput)")
    d = cfg.data
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1
            and d.val_fraction + d.test_fraction < 1):
        raise ConfigError("data.val_fraction and data.test_fraction must each be in [0, 1) "
                          f"and sum below 1 (got {d.val_fraction} and {d.test_fraction})")
    if d.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1 (got {d.batch_size})")
    if d.name in ("npz", "csv") and not d.path:
        raise ConfigError(f"data.path is required for the {d.name} dataset "
                          f"(--set data.path=<file.{d.name}>)")
    if d.name == "csv":
        _check_csv(d.path, d.target)
    _check_dataset(cfg)
    _check_text(cfg)
    _check_images(cfg)
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1 (got {cfg.train.epochs})")
    if cfg.train.torch_threads is not None and cfg.train.torch_threads < 1:
        raise ConfigError(f"train.torch_threads must be >= 1 or null (got "
                          f"{cfg.train.torch_threads}); null: half the cores")
    if cfg.train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be > 0 (got {cfg.train.learning_rate})")
    if cfg.train.beta_1 is not None and (cfg.train.optimizer not in ("adam", "adamw")
                                         or not 0 <= cfg.train.beta_1 < 1):
        raise ConfigError(f"train.beta_1 ({cfg.train.beta_1}) is Adam's first-moment decay: "
                          f"a value in [0, 1) with train.optimizer adam or adamw "
                          f"(got {cfg.train.optimizer!r})")
    validate_compression(cfg)


def validate_compression(cfg: ExperimentConfig) -> None:
    """The prune/quantize/distill sections: ranges and combinations."""
    from kdl.registry import MODELS

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
    _check_name(MODELS, d.student, "distill.student")
    presets = sorted(MODELS.get(d.student).presets)
    if d.student_preset not in presets:
        raise ConfigError(f"distill.student_preset: model {d.student!r} has no preset "
                          f"{d.student_preset!r}.{_close(d.student_preset, presets)} "
                          f"Available: {', '.join(presets)}.")
    if not d.temperature > 0 or not 0 <= d.alpha <= 1:
        raise ConfigError(f"distill.temperature must be > 0 and distill.alpha in [0, 1] "
                          f"(got {d.temperature} and {d.alpha})")
    order = {name: i for i, name in enumerate(cfg.stages)}
    for later in ("distill", "prune", "quantize"):
        if later in order and "train" in order and order[later] < order["train"]:
            raise ConfigError(f"stages: {later} needs the trained model: put it after train")
    if "quantize" in order and "prune" in order and order["quantize"] < order["prune"]:
        raise ConfigError("stages: quantize after prune (QAT keeps the pruning masks)")


def _check_distribution(cfg: ExperimentConfig) -> None:
    """`train.distribution`: what the backend supports, a consistent mesh and layout."""
    from kdl.backend.distribution import check_config

    message = check_config(cfg.train.distribution, cfg.data.batch_size)
    if message:
        raise ConfigError(message)
    d = cfg.train.distribution
    if d.kind != "none" and cfg.train.transfer.phases:
        raise ConfigError("train.distribution covers one fit: train.transfer.phases are not "
                          "distributed; set train.distribution.kind=none or drop the phases")


def _check_dataset(cfg: ExperimentConfig) -> None:
    """`data.params` are arguments of the dataset; several-input datasets train only."""
    import inspect

    from kdl.registry import DATASETS

    d = cfg.data
    entry = DATASETS.get(d.name)
    from kdl.data.sources import IMAGE_OPTIONS

    accepted = [p for p in inspect.signature(entry.obj).parameters
                if p not in ("path", "target", "task", "text", *IMAGE_OPTIONS)]
    for key in d.params:
        if key not in accepted:
            raise ConfigError(f"data.params: dataset {d.name!r} has no argument {key!r}."
                              f"{_close(key, accepted)} Arguments: "
                              f"{', '.join(accepted) or 'none'}.")
    inputs = entry.meta.get("inputs", 1)
    if inputs > 1:
        if d.normalize:
            raise ConfigError(f"data.normalize: dataset {d.name!r} feeds {inputs} inputs "
                              "(token ids among them), which are not standardized: set "
                              "data.normalize=false")
        others = [s for s in cfg.stages if s != "train"]
        if others:
            raise ConfigError(f"stages: dataset {d.name!r} feeds {inputs} inputs, which only "
                              f"the train stage takes (not {', '.join(others)}): "
                              "set stages=[train]")
        if cfg.train.checkpoint:
            raise ConfigError(f"train.checkpoint: resumable checkpoints take one input array; "
                              f"dataset {d.name!r} feeds {inputs}: set train.checkpoint=false")


def _check_images(cfg: ExperimentConfig) -> None:
    """Image size, augmentation layers and a model that takes raw pixels."""
    from kdl.data import DataError
    from kdl.data.augment import check_augment
    from kdl.registry import DATASETS, MODELS

    d = cfg.data
    if len(d.image_size) != 2 or min(d.image_size) < 1:
        raise ConfigError(f"data.image_size must be [height, width] >= 1 (got {d.image_size})")
    try:
        check_augment(d.augment)
    except DataError as e:
        raise ConfigError(str(e)) from None
    files = DATASETS.get(d.name).meta.get("files", False)
    if d.cache and not files:
        raise ConfigError(f"data.cache caches decoded image files; dataset {d.name!r} is "
                          "in memory already: drop data.cache")
    if files and cfg.train.checkpoint:
        raise ConfigError("train.checkpoint: resumable checkpoints take in-memory arrays, not "
                          f"streamed image files ({d.name!r}): set train.checkpoint=false")
    if d.augment and cfg.train.checkpoint:
        raise ConfigError("train.checkpoint: resumable checkpoints do not run data.augment: "
                          "set train.checkpoint=false or drop the augmentation")
    if files:  # the folder's layout and every file, checked now (the scan is reused)
        from kdl.data.sources import IMAGE_OPTIONS

        options = {k: getattr(d, k) for k in IMAGE_OPTIONS}
        try:
            DATASETS.build(d.name, **({"path": d.path} if d.path else {}), **options,
                           **d.params)
        except DataError as e:
            raise ConfigError(str(e)) from None
    weights = cfg.model.params.get("weights")
    if MODELS.get(cfg.model.name).meta.get("raw_pixels") and weights not in (
            None, "none", "imagenet") and not Path(str(weights)).expanduser().is_file():
        raise ConfigError(f"model.params.weights: {weights!r} is not a file; use none (random "
                          "init), imagenet (downloads) or a local weights file")
    if MODELS.get(cfg.model.name).meta.get("raw_pixels") and d.normalize:
        raise ConfigError(f"model {cfg.model.name!r} takes raw pixels in [0, 255] and rescales "
                          "inside: set data.normalize=false")
    if MODELS.get(cfg.model.name).meta.get("raw_pixels") and "quantize" in cfg.stages \
            and cfg.quantize.qat:
        raise ConfigError(f"model {cfg.model.name!r} has depthwise convolutions, which native "
                          "QAT does not fake-quantize: set quantize.qat=false (post-training "
                          "int8)")


TEXT_MODELS_HINT = "bag_of_embeddings, transformer_classifier or bert_classifier"


def _check_text(cfg: ExperimentConfig) -> None:
    """Text data: the tokenizer's settings, a model that takes token ids, and the user's
    file read now (bad rows reported, a one-line error before any work)."""
    import inspect

    from kdl.data import DataError
    from kdl.registry import DATASETS, MODELS

    d, t = cfg.data, cfg.tokenizer
    entry = DATASETS.get(d.name)
    if entry.meta.get("input") != "text":
        if d.text is not None:
            raise ConfigError(f"data.text names a text column; dataset {d.name!r} is not a "
                              "text dataset (text_csv, text_folder, imdb, reuters, reviews)")
        return
    if "vocab_size" not in inspect.signature(MODELS.get(cfg.model.name).obj).parameters:
        raise ConfigError(f"model.name: {cfg.model.name!r} does not take token ids; text "
                          f"datasets need {TEXT_MODELS_HINT}")
    if t.sequence_length < 1 or t.vocab_size < 8:
        raise ConfigError(f"tokenizer.sequence_length must be >= 1 and tokenizer.vocab_size "
                          f">= 8 (got {t.sequence_length} and {t.vocab_size})")
    if t.preset is not None and not Path(t.preset).expanduser().is_dir():
        raise ConfigError(f"tokenizer.preset {t.preset!r} is not a local directory (a KerasHub "
                          "preset or a Hugging Face checkpoint holding vocab.txt)")
    if t.kind == "byte_pair" and not t.preset:
        raise ConfigError("tokenizer.kind=byte_pair: KerasHub learns no BPE merges; use "
                          "wordpiece or sentencepiece (learned) or bytes")
    if t.kind == "bytes" and (t.start_token or t.end_token):
        raise ConfigError("tokenizer.kind=bytes has no start/end tokens: drop "
                          "tokenizer.start_token/end_token")
    if "checkpoint" in cfg.model.params and not t.preset:
        raise ConfigError("model.params.checkpoint fine-tunes a pretrained backbone: load its "
                          "vocabulary too with tokenizer.preset=<the same directory>")
    if entry.meta.get("check"):  # the user's file, read now: bad rows fail before any work
        options = {k: v for k, v in {"path": d.path, "text": d.text,
                                     "target": d.target}.items() if v is not None}
        accepted = inspect.signature(entry.obj).parameters
        try:
            entry.obj(**{k: v for k, v in options.items() if k in accepted}, **d.params)
        except DataError as e:
            raise ConfigError(str(e)) from None


def tokenizer_options(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """`load_splits(tokenizer=...)` of a text dataset; None for other data."""
    from kdl.registry import DATASETS

    if DATASETS.get(cfg.data.name).meta.get("input") != "text":
        return None
    return dataclasses.asdict(cfg.tokenizer)


def _check_csv(path: str, target: str | None) -> None:
    """The CSV exists and has the target column (reads the header line only)."""
    import csv

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.path: {str(p)!r} does not exist or is not a file")
    with p.open(newline="") as fh:
        header = next(csv.reader(fh), [])
    if not target:
        raise ConfigError(f"data.target: name the target column of {p.name}; "
                          f"columns: {', '.join(header)}")
    if target not in header:
        raise ConfigError(f"data.target: column {target!r} is not in {p.name}."
                          f"{_close(target, header)} Columns: {', '.join(header)}.")


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    from kdl.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
