"""Every use of Keras's private API in kdl, pipelines and benchmarks, in one place.

Keras 3 has no public way to do these (each says what it touches and why no public
API serves). All were checked on Keras `CHECKED_ON`; tests/backend/test_keras_private.py
exercises each one on a small model, so a Keras upgrade that renames or changes one
fails there, by name, rather than deep inside QAT or a distributed run, and
tests/test_layering.py fails if code outside this module touches a private Keras name
or imports `keras.src`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras

CHECKED_ON = "3.15"  # the Keras version every function below was checked on


def functional_class() -> type:
    """`keras.src.models.functional.Functional` (Keras 3.15): the graph-network model class.
    Public Keras exports no name for it (`keras.Model` also covers subclassed models,
    which have no layer graph). A `keras.Sequential` is NOT one (Keras 3.15: it wraps a
    Functional in `_functional`)."""
    from keras.src.models.functional import Functional

    return Functional


def is_functional(model: Any) -> bool:
    """A Functional model (built from `keras.Input`; not a Sequential, Keras 3.15)."""
    return isinstance(model, functional_class())


def is_keras_layer_class(cls: type) -> bool:
    """A layer class of Keras itself (defined under `keras.src.layers`, Keras 3.15) and
    exported as `keras.layers.<name>`, not a subclass defined elsewhere."""
    return cls.__module__.startswith("keras.src.layers") and hasattr(keras.layers, cls.__name__)


def flatten_layers(layer: Any, include_self: bool = True,
                   recursive: bool = True) -> Iterator[Any]:
    """Every layer inside `layer`, nested ones too (`Layer._flatten_layers`, Keras 3.15).
    Public `model.layers` lists only the top level."""
    return layer._flatten_layers(include_self=include_self, recursive=recursive)


def inbound_nodes(layer: Any) -> list[Any]:
    """The call nodes of `layer` in its model's graph (`Layer._inbound_nodes`, Keras 3.15);
    each has `.input_tensors`."""
    return layer._inbound_nodes


def source_operation(tensor: Any) -> Any:
    """The layer that produced a symbolic tensor (`KerasTensor._keras_history.operation`,
    Keras 3.15)."""
    return tensor._keras_history.operation


def has_been_called(model: Any) -> bool:
    """Whether the model has run once (`Model._called`, Keras 3.15; True when absent, so a
    Keras without it is taken as called). Keras's ONNX export refuses a model that never
    ran."""
    return getattr(model, "_called", True)


def learning_rate_schedule(optimizer: Any) -> Any:
    """The optimizer's learning rate as given: the schedule object, or the variable
    (`Optimizer._learning_rate`, Keras 3.15; None where absent). Public
    `optimizer.learning_rate` evaluates a schedule at the current step instead."""
    return getattr(optimizer, "_learning_rate", None)


def optimizer_trainable_variables(optimizer: Any) -> list[Any]:
    """The variables an optimizer was built for (`Optimizer._trainable_variables`,
    Keras 3.15)."""
    return optimizer._trainable_variables


def variable_key(optimizer: Any, variable: Any) -> str:
    """The key an optimizer files a variable's slots under (`Optimizer._var_key`,
    Keras 3.15)."""
    return optimizer._var_key(variable)


def symbolic_build(model: Any) -> Callable[..., Any] | None:
    """The model's first-batch build (`Trainer._maybe_symbolic_build(iterator=None,
    data_batch=None)`, Keras 3.15), or None where this Keras has none."""
    return getattr(model, "_maybe_symbolic_build", None)


def set_symbolic_build(model: Any, build: Callable[..., Any]) -> None:
    """Replace the model's first-batch build (see `symbolic_build`)."""
    model._maybe_symbolic_build = build


def clip_gradients(optimizer: Any) -> Callable[[list[Any]], list[Any]]:
    """The optimizer's gradient clipping, `clipnorm`/`clipvalue`/`global_clipnorm`
    (`Optimizer._clip_gradients(grads)`, Keras 3.15)."""
    return optimizer._clip_gradients


def set_clip_gradients(optimizer: Any, clip: Callable[[list[Any]], list[Any]]) -> None:
    """Replace the optimizer's gradient clipping (see `clip_gradients`)."""
    optimizer._clip_gradients = clip


def tensorflow_trainer_module() -> Any:
    """`keras.src.backend.tensorflow.trainer` (Keras 3.15), whose module-level
    `reduce_per_replica(values, strategy, reduction)` averages a step's logs."""
    from keras.src.backend.tensorflow import trainer

    return trainer


@contextlib.contextmanager
def bounded_attention_mask_fill(fill: Callable[[Any, Any], Any]) -> Iterator[None]:
    """Within the block, Keras's masked attention fills masked logits with
    `fill(logits, bool_mask)` instead of its huge constants: `Softmax.call` with a
    mask (-1e9, `keras.src.layers.activations.softmax`; MultiHeadAttention with
    dropout) and the TensorFlow backend's `_apply_masks` (-2.4e38,
    `keras.src.backend.tensorflow.nn`; MultiHeadAttention's fused
    `ops.dot_product_attention` path), Keras 3.15. Used while tracing a model for
    TFLite: a full-int8 file gives that select one per-tensor scale, and a huge fill
    rounds every real logit to the same value. Restored on exit, also on error. No
    public API sets the fill. Not thread-safe (patches two module attributes)."""
    from keras.src.backend.tensorflow import nn as tf_nn
    from keras.src.layers.activations import softmax as softmax_module

    softmax_call, apply_masks = softmax_module.Softmax.call, tf_nn._apply_masks

    def call(self, inputs, mask=None):
        axes = tuple(self.axis) if isinstance(self.axis, (tuple, list)) else (self.axis,)
        if mask is None or len(axes) != 1 or axes[0] % len(inputs.shape) != len(inputs.shape) - 1:
            return softmax_call(self, inputs, mask=mask)  # only the last axis is rewritten
        mask = keras.ops.cast(mask, "bool") if keras.backend.standardize_dtype(
            mask.dtype) == "bool" else keras.ops.greater(mask, 0.5)
        outputs = softmax_call(self, fill(inputs, mask))
        return keras.ops.where(mask, outputs, 0.0)  # as Keras: a fully masked row -> 0

    def masks(logits, mask, is_causal):
        if mask is None and not is_causal:
            return logits
        import tensorflow as tf  # as Keras's own _apply_masks, without its constant

        keep = tf.ones_like(logits, dtype="bool")
        if mask is not None:
            keep = tf.logical_and(keep, mask)
        if is_causal:
            shape = tf.shape(logits)
            keep = tf.logical_and(keep, tf.linalg.band_part(
                tf.ones((shape[2], shape[3]), "bool"), -1, 0)[None, None])
        return fill(logits, keep)

    softmax_module.Softmax.call, tf_nn._apply_masks = call, masks
    try:
        yield
    finally:
        softmax_module.Softmax.call, tf_nn._apply_masks = softmax_call, apply_masks
