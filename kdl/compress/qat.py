"""Native quantization-aware training (fake quantization) for any Keras backend.

`quantize_aware(model)` clones a Functional/Sequential model into one that
simulates the TFLite int8 scheme during training:

- weights of Dense and ConvND layers: symmetric int8 (`[-127, 127]`, zero
  point 0), per output channel, scale `max|w| / 127`;
- activations: asymmetric int8 per tensor, with the range tracked by an
  exponential moving average during training, at the points where TFLite
  keeps a quantized tensor (the model input, after each fused
  Conv/Dense+BatchNorm+ReLU group, before and after softmax, ...; not after
  max-pooling, flatten, reshape or dropout, which keep their input's scale).
  Softmax outputs use TFLite's fixed scale 1/256, zero point -128.

Gradients pass straight through the rounding (and are zero where an
activation is clipped). After fine-tuning, `strip_quantization` returns a
plain model of the original architecture whose kernels lie exactly on their
int8 grid, so the full-int8 TFLite converter quantizes them without error;
`calibrate` sets the activation ranges from the same representative data the
converter calibrates with, so the fake-quant model predicts what the `.tflite`
file will. Pruned (zero) weights stay zero under fake quantization; keep them
zero through QAT with `MagnitudePruner.keep_zeros(qat_model).callback()`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

# Layers whose int8 output reuses the input's scale in TFLite (no quantizer after them).
SAME_SCALE = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
              keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
              keras.layers.Identity, keras.layers.InputLayer)
# Layers TFLite fuses into the op before them (Conv/Dense + BatchNorm + ReLU).
FUSED_AFTER = (keras.layers.BatchNormalization, keras.layers.ReLU)
FUSED_ACTIVATIONS = ("relu", "relu6", "linear")


def _straight_through(x, q):
    return ops.add(x, ops.stop_gradient(ops.subtract(q, x)))


def fake_quant_weights(w, axis: int = -1):
    """Symmetric int8 fake quantization of `w`, one scale per index of `axis`."""
    axes = [a for a in range(len(w.shape)) if a != axis % len(w.shape)]
    scale = ops.divide(ops.max(ops.abs(w), axis=axes, keepdims=True), 127.0)
    scale = ops.where(ops.equal(scale, 0.0), ops.ones_like(scale), scale)
    q = ops.multiply(ops.clip(ops.round(ops.divide(w, scale)), -127.0, 127.0), scale)
    return _straight_through(w, q)


def activation_qparams(min_val, max_val):
    """TFLite's asymmetric int8 `(scale, zero_point)` for a float range (zero included)."""
    lo = ops.minimum(min_val, 0.0)
    hi = ops.maximum(max_val, 0.0)
    scale = ops.divide(ops.subtract(hi, lo), 255.0)
    scale = ops.where(ops.greater(scale, 0.0), scale, ops.ones_like(scale))
    zero_point = ops.clip(ops.round(ops.subtract(-128.0, ops.divide(lo, scale))), -128.0, 127.0)
    return scale, zero_point


def fake_quant_activation(x, min_val, max_val):
    """Asymmetric int8 fake quantization of `x` in `[min_val, max_val]` (TFLite's nudging)."""
    min_val = ops.stop_gradient(ops.convert_to_tensor(min_val, "float32"))
    max_val = ops.stop_gradient(ops.convert_to_tensor(max_val, "float32"))
    scale, zp = activation_qparams(min_val, max_val)
    lo = ops.multiply(ops.subtract(-128.0, zp), scale)
    hi = ops.multiply(ops.subtract(127.0, zp), scale)
    x = ops.clip(x, lo, hi)
    q = ops.multiply(ops.round(ops.divide(x, scale)), scale)
    return _straight_through(x, q)


@keras.saving.register_keras_serializable(package="kdl")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to int8 with a tracked (or fixed) range.

    Args:
        momentum: EMA momentum of the range during training.
        fixed_range: `(min, max)` to use instead of tracking (softmax outputs).
        source: name of the layer whose output this quantizes (for reports).

    Call arguments:
        inputs: any float tensor.
        training: update the tracked range from this batch.

    Modes: `"quantize"` (default) or `"observe"` (identity; records the
    absolute min/max seen, used by `calibrate`).
    """

    def __init__(self, momentum: float = 0.99, fixed_range: tuple | None = None,
                 source: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.fixed_range = tuple(fixed_range) if fixed_range is not None else None
        self.source = source
        self.mode = "quantize"

    def build(self, input_shape):
        lo, hi = self.fixed_range or (0.0, 0.0)
        init = keras.initializers.Constant
        self.min_val = self.add_weight(shape=(), initializer=init(lo), trainable=False,
                                       name="min_val")
        self.max_val = self.add_weight(shape=(), initializer=init(hi), trainable=False,
                                       name="max_val")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    name="seen")

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        if self.mode == "observe":
            first = ops.equal(self.seen, 0.0)
            self.min_val.assign(ops.where(first, ops.min(x), ops.minimum(self.min_val, ops.min(x))))
            self.max_val.assign(ops.where(first, ops.max(x), ops.maximum(self.max_val, ops.max(x))))
            self.seen.assign(ops.add(self.seen, 1.0))
            return inputs
        if training and self.fixed_range is None:
            first = ops.equal(self.seen, 0.0)
            m = self.momentum
            bmin, bmax = ops.stop_gradient(ops.min(x)), ops.stop_gradient(ops.max(x))
            self.min_val.assign(ops.where(first, bmin, m * self.min_val + (1 - m) * bmin))
            self.max_val.assign(ops.where(first, bmax, m * self.max_val + (1 - m) * bmax))
            self.seen.assign(ops.add(self.seen, 1.0))
        y = fake_quant_activation(x, self.min_val, self.max_val)
        return ops.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum,
                "fixed_range": self.fixed_range, "source": self.source}


@keras.saving.register_keras_serializable(package="kdl")
class QuantDense(keras.layers.Dense):
    """A Dense layer whose kernel is fake-quantized to int8 per output channel."""

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, fake_quant_weights(self.kernel, axis=-1))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _quant_conv(base):
    class QuantConv(base):
        def convolution_op(self, inputs, kernel):
            return super().convolution_op(inputs, fake_quant_weights(kernel, axis=-1))

    QuantConv.__name__ = QuantConv.__qualname__ = f"Quant{base.__name__}"
    QuantConv.__doc__ = f"A {base.__name__} whose kernel is fake-quantized to int8 per channel."
    return keras.saving.register_keras_serializable(package="kdl")(QuantConv)


QuantConv1D = _quant_conv(keras.layers.Conv1D)
QuantConv2D = _quant_conv(keras.layers.Conv2D)
QuantConv3D = _quant_conv(keras.layers.Conv3D)
QUANT_LAYERS = {keras.layers.Dense: QuantDense, keras.layers.Conv1D: QuantConv1D,
                keras.layers.Conv2D: QuantConv2D, keras.layers.Conv3D: QuantConv3D}


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def _consumers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    out: dict[str, list] = {la.name: [] for la in model.layers}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                src = t._keras_history.operation
                if src.name in out and layer not in out[src.name]:
                    out[src.name].append(layer)
    return out


def _is_softmax(layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "softmax")


def quantize_aware(model: keras.Model, momentum: float = 0.99) -> keras.Model:
    """A fake-quantized clone of `model` (Functional or Sequential) for QAT.

    Args:
        model: the float model (trained, possibly pruned); it is not modified.
        momentum: EMA momentum of the tracked activation ranges.

    Returns:
        A new model with the same layer names, `Quant*` layers for Dense/Conv,
        and `ActivationQuantizer` layers; weights copied from `model`.

    Example:

    ```python
    qat = quantize_aware(model)
    qat.compile(...); qat.fit(x, y, epochs=2)
    calibrate(qat, x_representative)
    float_model = strip_quantization(qat, model)  # convert this one to int8
    ```
    """
    from keras.src.models.functional import Functional

    if not isinstance(model, Functional):  # Sequential models are Functional too
        raise ValueError(f"quantize_aware needs a Functional or Sequential model; "
                         f"{model.name!r} is a subclassed {type(model).__name__}")
    consumers = _consumers(model)
    input_consumers = {la.name for name, cs in consumers.items()
                       if isinstance(model.get_layer(name), keras.layers.InputLayer)
                       for la in cs}
    supported = tuple(QUANT_LAYERS)

    def quantize_output(layer) -> bool:
        if isinstance(layer, SAME_SCALE):
            return False
        cs = consumers.get(layer.name, [])
        fusable = isinstance(layer, supported + (keras.layers.BatchNormalization,))
        if fusable and _activation_name(layer) in (None, *FUSED_ACTIVATIONS) and cs and all(
                isinstance(c, FUSED_AFTER) for c in cs):
            return False
        return True

    def clone(layer):
        cfg = layer.get_config()
        cls = QUANT_LAYERS.get(type(layer))
        if cls is None:
            return layer.__class__.from_config(cfg)
        if _activation_name(layer) == "softmax":
            cfg["activation"] = "linear"
        return cls.from_config(cfg)

    originals = {la.name: la for la in model.layers}

    def call(layer, *args, **kwargs):
        if layer.name in input_consumers and args:
            args = (ActivationQuantizer(momentum, source="inputs",
                                        name=f"{layer.name}_input_quant")(args[0]), *args[1:])
        out = layer(*args, **kwargs)
        original = originals.get(layer.name, layer)
        if _is_softmax(original):
            return ActivationQuantizer(momentum, fixed_range=(0.0, 255.0 / 256.0),
                                       source=layer.name, name=f"{layer.name}_quant")(out)
        if isinstance(layer, tuple(QUANT_LAYERS.values())) and _activation_name(
                original) == "softmax":
            out = ActivationQuantizer(momentum, source=layer.name,
                                      name=f"{layer.name}_logits_quant")(out)
            out = keras.layers.Softmax(name=f"{layer.name}_softmax", dtype=layer.dtype_policy)(out)
            return ActivationQuantizer(momentum, fixed_range=(0.0, 255.0 / 256.0),
                                       source=layer.name, name=f"{layer.name}_quant")(out)
        if quantize_output(original):
            return ActivationQuantizer(momentum, source=layer.name,
                                       name=f"{layer.name}_quant")(out)
        return out

    qat = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.weights:
            qat.get_layer(layer.name).set_weights(layer.get_weights())
    return qat


def quantizers(model: keras.Model) -> list[ActivationQuantizer]:
    return [la for la in model.layers if isinstance(la, ActivationQuantizer)]


def calibrate(qat_model: keras.Model, x: np.ndarray, batch_size: int = 128) -> dict[str, Any]:
    """Set every tracked activation range to the min/max of the float model on `x`.

    This is what the TFLite converter measures on its representative dataset,
    so after `calibrate(qat, rep)` the fake-quant model predicts what the
    full-int8 `.tflite` converted with `rep` will.

    Returns:
        `{quantizer name: (min, max)}`.
    """
    qs = [q for q in quantizers(qat_model) if q.fixed_range is None]
    for q in qs:
        q.mode = "observe"
        q.seen.assign(0.0)
    try:
        for i in range(0, len(x), batch_size):
            qat_model(ops.convert_to_tensor(x[i:i + batch_size]), training=False)
    finally:
        for q in qs:
            q.mode = "quantize"
    return {q.name: (float(ops.convert_to_numpy(q.min_val)),
                     float(ops.convert_to_numpy(q.max_val))) for q in qs}


def strip_quantization(qat_model: keras.Model, float_model: keras.Model) -> keras.Model:
    """A plain copy of `float_model` carrying the QAT weights, kernels snapped to int8.

    Args:
        qat_model: the fine-tuned model from `quantize_aware`.
        float_model: the model it was made from (gives the architecture).
    """
    out = keras.models.clone_model(float_model)
    for layer in out.layers:
        if not layer.weights:
            continue
        source = qat_model.get_layer(layer.name)
        weights = source.get_weights()
        if isinstance(source, tuple(QUANT_LAYERS.values())):
            weights[0] = ops.convert_to_numpy(fake_quant_weights(
                ops.convert_to_tensor(weights[0]), axis=-1))
        layer.set_weights(weights)
    return out
