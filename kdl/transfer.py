"""Transfer learning: reuse a trained backbone, train a new head, then unfreeze in phases.

- `load_backbone`: an earlier kdl run's `model.keras` (cut below its head), a
  `keras.applications` model with local weights, a local KerasHub preset
  directory or a local Hugging Face checkpoint directory. Nothing is downloaded
  unless the caller asks for it.
- `with_head`: the backbone plus a fresh kdl output head.
- `set_trainable`: freeze everything, then unfreeze the top N weighted layers
  or named blocks (BatchNormalization stays frozen by default, as in the
  Keras fine-tuning guide: its statistics fit the pretraining data).
- `fine_tune`: phases of (what is trainable, learning rate, epochs), each
  compiled with a fresh optimizer: head first at a high rate, then deeper
  layers at lower rates (progressive unfreezing), and within a phase a rate per
  group of layers (`param_groups`, discriminative fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras

from kdl.models.heads import output_head
from kdl.optimizers import GroupedOptimizer


def load_backbone(source: str | Path, *, cut_at: str = "head", weights: str | None = None,
                  input_shape: tuple[int, ...] | None = None) -> keras.Model:
    """A feature extractor from a saved model, `keras.applications` or KerasHub.

    Args:
        source: one of
            - a `.keras` file, or a kdl run directory holding `model.keras`:
              the model up to the input of layer `cut_at` (kdl heads are named "head");
            - `"keras.applications:<Name>"` (e.g. `"keras.applications:MobileNetV3Small"`),
              built with `include_top=False`, `pooling="avg"` and `weights`;
            - `"kerashub:<preset or local directory>"`: a KerasHub backbone
              (needs `pip install keras-hub`; a local directory works offline);
            - `"hf:<local directory>"`: a Hugging Face Transformers checkpoint
              (`config.json` + `model.safetensors`, as `save_pretrained` writes
              it), converted by KerasHub's transformers converter (BERT, ViT,
              GPT-2, Llama, ... the `model_type`s KerasHub knows). No network.
        cut_at: the layer whose input becomes the backbone output (saved models).
        weights: for `keras.applications`: a local weights file, "imagenet"
            (downloads) or None (random init).
        input_shape: for `keras.applications`.

    Returns:
        A `keras.Model` from the inputs to the features.
    """
    text = str(source)
    if text.startswith("keras.applications:"):
        name = text.split(":", 1)[1]
        factory = getattr(keras.applications, name, None)
        if factory is None:
            raise ValueError(f"keras.applications has no model {name!r}")
        return factory(include_top=False, pooling="avg", weights=weights,
                       input_shape=input_shape)
    if text.startswith("hf:"):
        return _hf_backbone(text.split(":", 1)[1])
    if text.startswith("kerashub:"):
        try:
            import keras_hub
        except ImportError as e:
            raise ImportError("KerasHub backbones need `pip install keras-hub`") from e
        return keras_hub.models.Backbone.from_preset(text.split(":", 1)[1])
    path = Path(text)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}: give a .keras file or a kdl run "
                                "directory containing model.keras")
    model = keras.saving.load_model(path, compile=False)
    names = [layer.name for layer in model.layers]
    if cut_at not in names:
        raise ValueError(f"{path} has no layer {cut_at!r} to cut at; layers: {', '.join(names)}")
    return keras.Model(model.inputs, model.get_layer(cut_at).input, name="backbone")


def _hf_backbone(directory: str) -> keras.Model:
    """A KerasHub backbone from a local Hugging Face checkpoint directory."""
    import json

    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"hf:{directory}: no such directory; give a local Hugging Face "
                                "checkpoint directory (config.json + model.safetensors)")
    missing = [n for n in ("config.json", "model.safetensors") if not (path / n).is_file()]
    if missing:
        raise ValueError(f"hf:{directory} is not a Hugging Face checkpoint: it has no "
                         f"{' and no '.join(missing)} (write one with `save_pretrained(dir, "
                         "safe_serialization=True)`; a KerasHub preset is `kerashub:<dir>`)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"hf:{directory}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"hf:{directory}: config.json has no 'model_type', so it is not a "
                         "Hugging Face Transformers config")
    try:
        import keras_hub
        import safetensors  # noqa: F401  (keras_hub's converter reads the weights with it)
    except ImportError as e:
        raise ImportError("hf: backbones need `pip install keras-hub safetensors`") from e
    try:
        return keras_hub.models.Backbone.from_preset(str(path))
    except ValueError as e:
        raise ValueError(f"hf:{directory}: KerasHub cannot convert model_type "
                         f"{config['model_type']!r}: {e}") from e


def with_head(backbone: keras.Model, num_outputs: int, task: str = "classification",
              dropout: float = 0.0) -> keras.Model:
    """`backbone` followed by an optional dropout and a new kdl output head."""
    x = backbone.output
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(backbone.inputs, output_head(x, num_outputs, task), name="transfer")


def set_trainable(backbone: keras.Model, *, top_n: int = 0, names: Sequence[str] = (),
                  train_batchnorm: bool = False) -> list[str]:
    """Freeze `backbone`, then unfreeze its top `top_n` weighted layers and `names`.

    Args:
        backbone: the feature extractor (its layers are changed in place).
        top_n: how many of the last layers that have weights to unfreeze.
        names: layer names or name prefixes (blocks, e.g. "block5_") to unfreeze.
        train_batchnorm: also unfreeze BatchNormalization layers among them.

    Returns:
        The names of the layers now trainable.
    """
    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    unknown = [n for n in names if not any(layer.name.startswith(n) for layer in weighted)]
    if unknown:
        raise ValueError(f"no backbone layer named or starting with {unknown[0]!r}; "
                         f"layers with weights: {', '.join(lyr.name for lyr in weighted)}")
    if top_n < 0 or top_n > len(weighted):
        raise ValueError(f"top_n must be in [0, {len(weighted)}], got {top_n}")
    chosen = set(weighted[len(weighted) - top_n:]) if top_n else set()
    chosen |= {layer for layer in weighted if any(layer.name.startswith(n) for n in names)}
    opened = []
    for layer in backbone.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer in chosen and (train_batchnorm or not is_bn)
        if layer.trainable and layer.weights:
            opened.append(layer.name)
    return opened


@dataclass
class Phase:
    """One fine-tuning phase.

    Args:
        epochs: epochs in this phase.
        learning_rate: the rate for this phase (lower as deeper layers open).
        top_n: backbone layers (with weights) trainable, counted from the top.
        names: backbone layer names/prefixes trainable, in addition.
        param_groups: per-group rates within the phase (discriminative
            fine-tuning): `[{"match": regex, "lr_scale": s}, ...]` or
            `{regex: s}`, matched against variable paths (`"conv_0/kernel"`);
            see `kdl.optimizers.GroupedOptimizer`.
    """

    epochs: int
    learning_rate: float
    top_n: int = 0
    names: list[str] = field(default_factory=list)
    param_groups: list[dict] | dict[str, float] = field(default_factory=list)


def fine_tune(model: keras.Model, backbone: keras.Model, phases: Sequence[Phase], x, y=None, *,
              loss, metrics=(), optimizer: str | Callable = "adam", batch_size: int = 32,
              validation_data=None, callbacks=(), verbose=0) -> list[dict]:
    """Train `model` (backbone + head) phase by phase; the head is always trainable.

    Each phase sets what is trainable, compiles a fresh optimizer at its
    rate (so moments from a frozen phase never leak into newly opened
    layers), wrapped in a `GroupedOptimizer` when the phase has
    `param_groups`, and continues the epoch count.

    Args:
        optimizer: a Keras optimizer name, or a function of the learning rate
            that returns a fresh optimizer.
        x, y: training data as for `model.fit` (`y=None` for a dataset).

    Returns:
        Per phase: `{"trainable": [...], "learning_rate": lr, "history": {...}}`.
    """
    out, epoch = [], 0
    for phase in phases:
        opened = set_trainable(backbone, top_n=phase.top_n, names=phase.names)
        if callable(optimizer):
            opt = optimizer(phase.learning_rate)
        else:
            opt = keras.optimizers.get({"class_name": optimizer,
                                        "config": {"learning_rate": phase.learning_rate}})
        if phase.param_groups:
            opt = GroupedOptimizer(opt, phase.param_groups)
        model.compile(optimizer=opt, loss=loss, metrics=list(metrics))
        h = model.fit(x, y, batch_size=None if y is None else batch_size,
                      epochs=epoch + phase.epochs, shuffle=y is not None,
                      initial_epoch=epoch, validation_data=validation_data,
                      callbacks=list(callbacks), verbose=verbose)
        epoch += phase.epochs
        out.append({"trainable": opened, "learning_rate": phase.learning_rate,
                    "optimizer": opt,
                    "history": {k: [float(v) for v in vs] for k, vs in h.history.items()}})
    return out
