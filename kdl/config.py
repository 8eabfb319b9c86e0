"""The library's typed config: the strict loader and the sections kdl itself reads.

Every section is a dataclass (`DataConfig`, `ModelConfig`, `TrainConfig` and its
parts). Loading is strict: an unknown key, a value of the wrong type, or an
unknown registry name raises `ConfigError` naming the key, the allowed values
and the close matches, before any work starts. The experiment around these
sections (stages, tracking, export, ...) is the pipeline's (`pipelines/config.py`);
it builds on the loader here.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

import kdl.callbacks  # noqa: F401  (registers callbacks)
import kdl.data  # noqa: F401  (registers datasets)
import kdl.models  # noqa: F401  (registers models)
import kdl.schedules  # noqa: F401  (registers schedules)
from kdl.backend.distribution import check_config as check_distribution
from kdl.backend.distribution import custom_training_refusal, resume_refusal
from kdl.data import DataError
from kdl.data.augment import check_augment
from kdl.data.sources import IMAGE_OPTIONS
from kdl.registry import CALLBACKS, DATASETS, MODELS, SCHEDULES


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
    # Examples holding NaN/inf: "error" refuses the data (how many, where); "drop" drops
    # them, counted per split in preprocessing.json and the train stage's figures.
    nonfinite: Literal["error", "drop"] = "error"
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
    special_tokens: list[str] = field(  # WordPiece/byte_pair reserved tokens, [PAD] first
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
    # Kamiran-Calders reweighing: a side column of the dataset (e.g. biased_credit's
    # `group`); each training example is weighted P(group) P(label) / P(group, label).
    reweigh: str | None = None


# ----------------------------------------------------------------------------- loading


def close_matches(name: str, options) -> str:
    """`" Did you mean 'x'?"` for the options close to `name`, else `""`."""
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
        raise ConfigError(f"{key}: {value!r} is not allowed.{close_matches(value, args)} "
                          f"Allowed: {', '.join(repr(a) for a in args)}.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_mapping(tp, value, key + ".")
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


def from_mapping(cls, data: dict[str, Any], prefix: str = ""):
    """Build the dataclass `cls` from a nested dict, strictly (see the module doc)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown key {prefix}{k!r}.{close_matches(k, names)} "
                          f"Allowed keys of {prefix.rstrip('.') or 'the config'}: "
                          f"{', '.join(names)}.")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(cfg) -> dict[str, Any]:
    """A config dataclass as a nested dict."""
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


# ----------------------------------------------------------------------------- checks


def check_name(registry, name: str, key: str) -> None:
    """`name` is registered in `registry`, else a ConfigError listing close and all names."""
    if name not in registry:
        names = registry.names()
        raise ConfigError(f"{key}: unknown {registry.kind} {name!r}.{close_matches(name, names)} "
                          f"Available: {', '.join(names)}.")


def check_preset(model: str, preset: str, key: str) -> None:
    presets = sorted(MODELS.get(model).presets)
    if preset not in presets:
        raise ConfigError(f"{key}: model {model!r} has no preset "
                          f"{preset!r}.{close_matches(preset, presets)} "
                          f"Available: {', '.join(presets)}.")


def _check_param_groups(groups: list[ParamGroupConfig], key: str) -> None:
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


def validate_sections(data: DataConfig, model: ModelConfig, train: TrainConfig,
                      tokenizer: TokenizerConfig | None = None) -> None:
    """The library's checks: registry names and the keys of data/model/train (and the
    tokenizer of text data) that relate."""
    check_name(DATASETS, data.name, "data.name")
    check_name(MODELS, model.name, "model.name")
    check_preset(model.name, model.preset, "model.preset")
    if train.schedule != "constant":
        check_name(SCHEDULES, train.schedule, "train.schedule")
    for name in train.callbacks:
        check_name(CALLBACKS, name, "train.callbacks")
    if "reduce_lr_on_plateau" in train.callbacks and train.schedule != "constant":
        raise ConfigError("train.callbacks.reduce_lr_on_plateau sets the learning rate, which "
                          f"schedule {train.schedule!r} owns: set train.schedule=constant")
    if train.checkpoint_every_steps is not None and not train.checkpoint:
        raise ConfigError("train.checkpoint_every_steps needs train.checkpoint=true")
    _check_param_groups(train.param_groups, "train.param_groups")
    _check_distribution(train, data.batch_size)
    if MODELS.get(model.name).spec.custom_training and (
            message := custom_training_refusal(train.distribution, model.name)):
        raise ConfigError(message)
    t = train.transfer
    for i, phase in enumerate(t.phases):
        key = f"train.transfer.phases[{i}]"
        if phase.epochs < 1 or phase.learning_rate <= 0 or phase.top_n < 0:
            raise ConfigError(f"{key}: epochs must be >= 1, learning_rate > 0 and top_n >= 0 "
                              f"(got {phase.epochs}, {phase.learning_rate}, {phase.top_n})")
        _check_param_groups(phase.param_groups, f"{key}.param_groups")
    if t.phases and not t.backbone:
        raise ConfigError("train.transfer.phases need train.transfer.backbone (a kdl run "
                          "directory, .keras file, keras.applications:, kerashub: or hf: source)")
    if t.phases and train.checkpoint:
        raise ConfigError("train.transfer.phases cannot be checkpointed and resumed: set "
                          "train.checkpoint=false (or drop the phases)")
    d = data
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
    _check_dataset(data, train)
    _check_text(data, model, tokenizer or TokenizerConfig())
    if train.reweigh:
        check_column(data, train.reweigh, "train.reweigh")
        if train.checkpoint:
            raise ConfigError("train.reweigh with train.checkpoint is not supported (resumable "
                              "training takes no sample weights): set train.checkpoint=false")
    _check_images(data, model, train)
    if train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1 (got {train.epochs})")
    if train.torch_threads is not None and train.torch_threads < 1:
        raise ConfigError(f"train.torch_threads must be >= 1 or null (got "
                          f"{train.torch_threads}); null: half the cores")
    if train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be > 0 (got {train.learning_rate})")
    if train.beta_1 is not None and (train.optimizer not in ("adam", "adamw")
                                     or not 0 <= train.beta_1 < 1):
        raise ConfigError(f"train.beta_1 ({train.beta_1}) is Adam's first-moment decay: "
                          f"a value in [0, 1) with train.optimizer adam or adamw "
                          f"(got {train.optimizer!r})")


def dataset_inputs(data: DataConfig) -> int:
    """How many input arrays the configured dataset feeds (token ids, ...: more than one)."""
    return DATASETS.get(data.name).spec.inputs


def _check_dataset(data: DataConfig, train: TrainConfig) -> None:
    """`data.params` are arguments of the dataset; several-input datasets are not normalized."""
    entry = DATASETS.get(data.name)
    accepted = [p for p in inspect.signature(entry.obj).parameters
                if p not in ("path", "target", "task", "text", *IMAGE_OPTIONS)]
    for key in data.params:
        if key not in accepted:
            raise ConfigError(f"data.params: dataset {data.name!r} has no argument {key!r}."
                              f"{close_matches(key, accepted)} Arguments: "
                              f"{', '.join(accepted) or 'none'}.")
    inputs = dataset_inputs(data)
    if inputs > 1:
        if data.normalize:
            raise ConfigError(f"data.normalize: dataset {data.name!r} feeds {inputs} inputs "
                              "(token ids among them), which are not standardized: set "
                              "data.normalize=false")
        if train.checkpoint:
            raise ConfigError(f"train.checkpoint: resumable checkpoints take one input array; "
                              f"dataset {data.name!r} feeds {inputs}: set train.checkpoint=false")


def _check_distribution(train: TrainConfig, batch_size: int) -> None:
    """`train.distribution`: what the backend supports, a consistent mesh and layout."""
    message = check_distribution(train.distribution, batch_size)
    if message:
        raise ConfigError(message)
    if train.checkpoint and (message := resume_refusal(train.distribution)):
        raise ConfigError(message)
    if train.distribution.kind != "none" and train.transfer.phases:
        raise ConfigError("train.distribution covers one fit: train.transfer.phases are not "
                          "distributed; set train.distribution.kind=none or drop the phases")


def takes_raw_pixels(model: ModelConfig) -> bool:
    """The model rescales raw [0, 255] pixels itself (mobile backbones)."""
    return MODELS.get(model.name).spec.raw_pixels


def _check_images(data: DataConfig, model: ModelConfig, train: TrainConfig) -> None:
    """Image size, augmentation layers and a model that takes raw pixels."""
    d = data
    if len(d.image_size) != 2 or min(d.image_size) < 1:
        raise ConfigError(f"data.image_size must be [height, width] >= 1 (got {d.image_size})")
    try:
        check_augment(d.augment)
    except DataError as e:
        raise ConfigError(str(e)) from None
    files = DATASETS.get(d.name).spec.files
    if d.cache and not files:
        raise ConfigError(f"data.cache caches decoded image files; dataset {d.name!r} is "
                          "in memory already: drop data.cache")
    if files and train.checkpoint:
        raise ConfigError("train.checkpoint: resumable checkpoints take in-memory arrays, not "
                          f"streamed image files ({d.name!r}): set train.checkpoint=false")
    if d.augment and train.checkpoint:
        raise ConfigError("train.checkpoint: resumable checkpoints do not run data.augment: "
                          "set train.checkpoint=false or drop the augmentation")
    if files:  # the folder's layout and every file, checked now (the scan is reused)
        options = {k: getattr(d, k) for k in IMAGE_OPTIONS}
        try:
            DATASETS.build(d.name, **({"path": d.path} if d.path else {}), **options,
                           **d.params)
        except DataError as e:
            raise ConfigError(str(e)) from None
    weights = model.params.get("weights")
    if takes_raw_pixels(model) and weights not in (
            None, "none", "imagenet") and not Path(str(weights)).expanduser().is_file():
        raise ConfigError(f"model.params.weights: {weights!r} is not a file; use none (random "
                          "init), imagenet (downloads) or a local weights file")
    if takes_raw_pixels(model) and d.normalize:
        raise ConfigError(f"model {model.name!r} takes raw pixels in [0, 255] and rescales "
                          "inside: set data.normalize=false")


TEXT_MODELS_HINT = "bag_of_embeddings, transformer_classifier or bert_classifier"


def _check_text(data: DataConfig, model: ModelConfig, tokenizer: TokenizerConfig) -> None:
    """Text data: the tokenizer's settings, a model that takes token ids, and the user's
    file read now (bad rows reported, a one-line error before any work)."""
    d, t = data, tokenizer
    entry = DATASETS.get(d.name)
    if entry.spec.input != "text":
        if d.text is not None:
            raise ConfigError(f"data.text names a text column; dataset {d.name!r} is not a "
                              "text dataset (text_csv, text_folder, imdb, reuters, reviews)")
        return
    if "vocab_size" not in inspect.signature(MODELS.get(model.name).obj).parameters:
        raise ConfigError(f"model.name: {model.name!r} does not take token ids; text "
                          f"datasets need {TEXT_MODELS_HINT}")
    if t.sequence_length < 1 or t.vocab_size < 8:
        raise ConfigError(f"tokenizer.sequence_length must be >= 1 and tokenizer.vocab_size "
                          f">= 8 (got {t.sequence_length} and {t.vocab_size})")
    if t.preset is not None and not Path(t.preset).expanduser().is_dir():
        raise ConfigError(f"tokenizer.preset {t.preset!r} is not a local directory (a KerasHub "
                          "preset, a Hugging Face checkpoint holding vocab.txt, or for "
                          "byte_pair vocab.json + merges.txt)")
    if t.preset is not None and t.kind not in ("wordpiece", "byte_pair"):
        raise ConfigError(f"tokenizer.preset loads WordPiece or byte_pair vocabularies; "
                          f"tokenizer.kind={t.kind} is learned from the training split: drop "
                          "tokenizer.preset or set tokenizer.kind=wordpiece or byte_pair")
    if t.kind == "byte_pair" and not t.preset and t.vocab_size <= len(t.special_tokens) + 256:
        raise ConfigError(f"tokenizer.kind=byte_pair needs tokenizer.vocab_size > "
                          f"{len(t.special_tokens) + 256} ({len(t.special_tokens)} special "
                          f"tokens + 256 byte symbols), got {t.vocab_size}")
    if t.kind == "bytes" and (t.start_token or t.end_token):
        raise ConfigError("tokenizer.kind=bytes has no start/end tokens: drop "
                          "tokenizer.start_token/end_token")
    if "checkpoint" in model.params and not t.preset:
        raise ConfigError("model.params.checkpoint fine-tunes a pretrained backbone: load its "
                          "vocabulary too with tokenizer.preset=<the same directory>")
    if entry.spec.check:  # the user's file, read now: bad rows fail before any work
        options = {k: v for k, v in {"path": d.path, "text": d.text,
                                     "target": d.target}.items() if v is not None}
        accepted = inspect.signature(entry.obj).parameters
        try:
            entry.obj(**{k: v for k, v in options.items() if k in accepted}, **d.params)
        except DataError as e:
            raise ConfigError(str(e)) from None


def tokenizer_options(data: DataConfig, tokenizer: TokenizerConfig) -> dict[str, Any] | None:
    """`load_splits(tokenizer=...)` of a text dataset; None for other data."""
    if DATASETS.get(data.name).spec.input != "text":
        return None
    return dataclasses.asdict(tokenizer)


def dataset_columns(data: DataConfig) -> list[str]:
    """The side columns of the configured dataset (`RawData.columns`): a CSV's columns
    but the target, else the dataset's registered `columns`."""
    if data.name == "csv":
        with Path(data.path).expanduser().open(newline="") as fh:
            return [c for c in next(csv.reader(fh), []) if c != data.target]
    return list(DATASETS.get(data.name).spec.columns)


def check_column(data: DataConfig, column: str, key: str) -> None:
    """`key` names a side column of the dataset; the error lists them."""
    columns = dataset_columns(data)
    if column not in columns:
        raise ConfigError(f"{key}: dataset {data.name!r} has no column {column!r}."
                          f"{close_matches(column, columns)} Columns: "
                          f"{', '.join(columns) or 'none (csv and biased_credit have some)'}.")


def _check_csv(path: str, target: str | None) -> None:
    """The CSV exists and has the target column (reads the header line only)."""
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
                          f"{close_matches(target, header)} Columns: {', '.join(header)}.")
