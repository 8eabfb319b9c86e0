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
  Softmax outputs use TFLite's fixed scale 1/256, zero point -128;
- biases: int32 with scale `input_scale * weight_scale` per channel, as the
  converter stores them (each quantizer hands its scale to the next
  Dense/Conv layer through the graph);
- Conv + BatchNormalization: folded into one layer as the converter folds
  them (kernel `w * gamma / sqrt(var + eps)`, bias `beta - mean * ...`),
  with the batch-norm statistics frozen at their moving values during QAT,
  so the folded kernel and bias are quantized exactly as in the `.tflite`.

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

from kdl.backend import keras_private

# Layers whose int8 output reuses the input's scale in TFLite (no quantizer after them).
SAME_SCALE = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
              keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
              keras.layers.Identity, keras.layers.InputLayer)
# Layers TFLite fuses into the op before them (Conv/Dense + BatchNorm + ReLU).
FUSED_AFTER = (keras.layers.BatchNormalization, keras.layers.ReLU)
FUSED_ACTIVATIONS = ("relu", "relu6", "linear")


def _straight_through(x, q):
    return ops.add(x, ops.stop_gradient(ops.subtract(q, x)))


def weight_scale(w, axis: int = -1, keepdims: bool = True):
    """TFLite's per-channel int8 weight scale `max|w| / 127` (1 for an all-zero channel)."""
    axes = [a for a in range(len(w.shape)) if a != axis % len(w.shape)]
    scale = ops.divide(ops.max(ops.abs(w), axis=axes, keepdims=keepdims), 127.0)
    return ops.where(ops.equal(scale, 0.0), ops.ones_like(scale), scale)


def fake_quant_weights(w, axis: int = -1):
    """Symmetric int8 fake quantization of `w`, one scale per index of `axis`."""
    scale = weight_scale(w, axis)
    q = ops.multiply(ops.clip(ops.round(ops.divide(w, scale)), -127.0, 127.0), scale)
    return _straight_through(w, q)


def fake_quant_bias(b, scale):
    """`b` on the int32 grid of `scale` (`input_scale * weight_scale`), as TFLite stores it.

    A zero `scale` (an input quantizer that is calibrating) leaves `b` float,
    as in the float model the converter calibrates.
    """
    scale = ops.stop_gradient(scale)
    positive = ops.greater(scale, 0.0)
    safe = ops.where(positive, scale, ops.ones_like(scale))
    q = ops.where(positive, ops.multiply(ops.round(ops.divide(b, safe)), safe), b)
    return _straight_through(b, q)


def _bias_on_grid(bias, kernel, input_scale):
    """A Dense/Conv bias on TFLite's int32 grid `input_scale * weight_scale(kernel)`;
    float without `input_scale`."""
    if input_scale is None:
        return bias
    return fake_quant_bias(bias, ops.multiply(input_scale, weight_scale(kernel, keepdims=False)))


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
        return_scale: also return the int8 scale (a scalar), which the next
            `QuantDense`/`QuantConv*` takes as `input_scale` to quantize its bias.

    Call arguments:
        inputs: any float tensor.
        training: update the tracked range from this batch.

    Returns:
        The fake-quantized tensor, or `(tensor, scale)` with `return_scale`.

    Modes: `"quantize"` (default) or `"observe"` (identity; records the
    absolute min/max seen, used by `calibrate`; its scale output is 0, so the
    next layer's bias stays float, as in the float model TFLite calibrates).
    """

    def __init__(self, momentum: float = 0.99, fixed_range: tuple | None = None,
                 source: str | None = None, return_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.fixed_range = tuple(fixed_range) if fixed_range is not None else None
        self.source = source
        self.return_scale = return_scale
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
            return (inputs, ops.zeros(())) if self.return_scale else inputs
        if training and self.fixed_range is None:
            first = ops.equal(self.seen, 0.0)
            m = self.momentum
            bmin, bmax = ops.stop_gradient(ops.min(x)), ops.stop_gradient(ops.max(x))
            self.min_val.assign(ops.where(first, bmin, m * self.min_val + (1 - m) * bmin))
            self.max_val.assign(ops.where(first, bmax, m * self.max_val + (1 - m) * bmax))
            self.seen.assign(ops.add(self.seen, 1.0))
        y = fake_quant_activation(x, self.min_val, self.max_val)
        return self._with_scale(ops.cast(y, inputs.dtype))

    def _with_scale(self, y):
        if not self.return_scale:
            return y
        scale, _ = activation_qparams(ops.convert_to_tensor(self.min_val),
                                      ops.convert_to_tensor(self.max_val))
        return y, ops.stop_gradient(scale)

    def compute_output_shape(self, input_shape):
        return (input_shape, ()) if self.return_scale else input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum,
                "fixed_range": self.fixed_range, "source": self.source,
                "return_scale": self.return_scale}


@keras.saving.register_keras_serializable(package="kdl")
class QuantDense(keras.layers.Dense):
    """A Dense layer whose kernel is fake-quantized to int8 per output channel.

    Call arguments:
        inputs: the (fake-quantized) input.
        input_scale: the input's int8 scale; given, the bias is put on TFLite's
            int32 grid `input_scale * weight_scale`, else it stays float.
    """

    def call(self, inputs, input_scale=None, training=None):
        kernel = ops.convert_to_tensor(self.kernel)
        x = ops.matmul(inputs, fake_quant_weights(kernel, axis=-1))
        if self.bias is not None:
            x = ops.add(x, _bias_on_grid(ops.convert_to_tensor(self.bias), kernel, input_scale))
        if self.activation is not None:
            x = self.activation(x)
        return x


def _quant_conv(base):
    class QuantConv(base):
        def __init__(self, *args, batch_norm: dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_norm = batch_norm

        def build(self, input_shape):
            super().build(input_shape)
            bn = self.batch_norm
            if bn is None:
                return
            shape, init = (self.filters,), keras.initializers.get
            # Same names and order as BatchNormalization's weights (strip copies them back).
            if bn.get("scale", True):
                self.gamma = self.add_weight(shape=shape, name="gamma",
                                             initializer=init(bn.get("gamma_initializer", "ones")))
            if bn.get("center", True):
                self.beta = self.add_weight(shape=shape, name="beta",
                                            initializer=init(bn.get("beta_initializer", "zeros")))
            self.moving_mean = self.add_weight(shape=shape, name="moving_mean",
                                               initializer="zeros", trainable=False)
            self.moving_variance = self.add_weight(shape=shape, name="moving_variance",
                                                   initializer="ones", trainable=False)

        def _folded(self):
            """Kernel and bias with the batch norm folded in, as TFLite's converter folds them."""
            kernel = ops.convert_to_tensor(self.kernel)
            bias = ops.convert_to_tensor(self.bias) if self.use_bias else None
            bn = self.batch_norm
            if bn is None:
                return kernel, bias
            inv = ops.rsqrt(ops.add(self.moving_variance, bn.get("epsilon", 1e-3)))
            if bn.get("scale", True):
                inv = ops.multiply(inv, self.gamma)
            offset = ops.negative(ops.multiply(self.moving_mean, inv))
            if bn.get("center", True):
                offset = ops.add(self.beta, offset)
            if bias is not None:
                offset = ops.add(offset, ops.multiply(bias, inv))
            return ops.multiply(kernel, inv), offset

        def call(self, inputs, input_scale=None, training=None):
            kernel, bias = self._folded()
            x = self.convolution_op(inputs, fake_quant_weights(kernel, axis=-1))
            if bias is not None:
                bias = _bias_on_grid(bias, kernel, input_scale)
                if self.data_format == "channels_first":
                    bias = ops.reshape(bias, (1, self.filters) + (1,) * self.rank)
                x = ops.add(x, bias)
            if self.activation is not None:
                x = self.activation(x)
            return x

        # Conv's own versions save only kernel and bias; these save every weight.
        def save_own_variables(self, store):
            keras.layers.Layer.save_own_variables(self, store)

        def load_own_variables(self, store):
            keras.layers.Layer.load_own_variables(self, store)

        def get_config(self):
            return {**super().get_config(), "batch_norm": self.batch_norm}

    QuantConv.__name__ = QuantConv.__qualname__ = f"Quant{base.__name__}"
    QuantConv.__doc__ = (
        f"A {base.__name__} whose kernel is fake-quantized to int8 per channel.\n\n"
        "    Args:\n"
        "        batch_norm: the config of a BatchNormalization that follows it, folded\n"
        "            in (its weights live here, its statistics frozen), or None.\n\n"
        "    Call arguments:\n"
        "        inputs: the (fake-quantized) input.\n"
        "        input_scale: the input's int8 scale; given, the bias is quantized to\n"
        "            int32 as TFLite does, else it stays float.\n")
    return keras.saving.register_keras_serializable(package="kdl")(QuantConv)


QuantConv1D = _quant_conv(keras.layers.Conv1D)
QuantConv2D = _quant_conv(keras.layers.Conv2D)
QuantConv3D = _quant_conv(keras.layers.Conv3D)
QUANT_LAYERS = {keras.layers.Dense: QuantDense, keras.layers.Conv1D: QuantConv1D,
                keras.layers.Conv2D: QuantConv2D, keras.layers.Conv3D: QuantConv3D}


# Weight layers native QAT does not fake-quantize: refused by name (no silent float kernels
# in a model said to be trained for int8). Post-training int8 converts them.
NOT_COVERED = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
               keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def _consumers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    out: dict[str, list] = {la.name: [] for la in model.layers}
    for layer in model.layers:
        for node in keras_private.inbound_nodes(layer):
            for t in node.input_tensors:
                src = keras_private.source_operation(t)
                if src.name in out and layer not in out[src.name]:
                    out[src.name].append(layer)
    return out


def _is_softmax(layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "softmax")


def _is_float(tensor) -> bool:
    """Token ids and masks (int, bool) are not int8 activations: TFLite keeps them as they
    are, so fake-quantizing them would only corrupt the ids (a float tensor otherwise)."""
    return not isinstance(tensor, keras.KerasTensor) or "float" in str(tensor.dtype)


def functional_view(model: keras.Model) -> keras.Model:
    """`model` as a Functional graph of its layers: a Functional model itself; a built
    `keras.Sequential` (not a Functional on Keras 3.15) as `keras.Model(model.inputs,
    model.outputs)` over the same layer objects (no copy, no new weights).

    Raises:
        ValueError: a subclassed model (no layer graph) or an unbuilt Sequential.
    """
    if keras_private.is_functional(model):
        return model
    if isinstance(model, keras.Sequential):
        try:
            inputs = model.inputs
        except AttributeError:  # Keras: "has no defined inputs yet"
            raise ValueError(f"Sequential model {model.name!r} is not built; start it with "
                             "keras.Input(shape) or call model.build(input_shape)") from None
        return keras.Model(inputs, model.outputs, name=model.name)
    raise ValueError(f"{model.name!r} is a subclassed {type(model).__name__} (no layer graph)")


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
    try:
        model = functional_view(model)
    except ValueError as e:
        raise ValueError(f"quantize_aware needs a Functional or Sequential model: {e}") from None
    refused = [la.name for la in model.layers if isinstance(la, NOT_COVERED)]
    if refused:
        raise ValueError(
            f"native QAT does not cover {len(refused)} depthwise/separable convolution layer(s) "
            f"of {model.name!r} ({', '.join(refused[:4])}{', ...' if len(refused) > 4 else ''}):"
            " their kernels would stay float while the rest trains for int8. Use post-training "
            "int8 for this model (quantize.qat=false); MobileNet/EfficientNet blocks convert "
            "fine that way")
    consumers = _consumers(model)
    input_consumers = {la.name for name, cs in consumers.items()
                       if isinstance(model.get_layer(name), keras.layers.InputLayer)
                       for la in cs}
    supported = tuple(QUANT_LAYERS)
    fused = _batch_norms_to_fold(model, consumers)  # conv name -> its BatchNormalization
    folded_bn = {bn.name for bn in fused.values()}

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
        if layer.name in folded_bn:  # its weights and arithmetic live in the conv before it
            return keras.layers.Identity(name=layer.name)
        cfg = layer.get_config()
        cls = QUANT_LAYERS.get(type(layer))
        if cls is None:
            return layer.__class__.from_config(cfg)
        if _activation_name(layer) == "softmax":
            cfg["activation"] = "linear"
        if layer.name in fused:
            cfg["batch_norm"] = fused[layer.name].get_config()
        return cls.from_config(cfg)

    originals = {la.name: la for la in model.layers}
    scales: dict[int, Any] = {}  # id(tensor) -> its int8 scale tensor (kept alive in `kept`)
    kept: list = []

    def quantize(out, **kw):
        y, scale = ActivationQuantizer(momentum, return_scale=True, **kw)(out)
        scales[id(y)] = scale
        kept.append(y)
        return y

    def call(layer, *args, **kwargs):
        if layer.name in input_consumers and args and _is_float(args[0]):
            args = (quantize(args[0], source="inputs", name=f"{layer.name}_input_quant"),
                    *args[1:])
        original = originals.get(layer.name, layer)
        if layer.name in folded_bn:
            kwargs = {}  # the Identity in its place takes no mask/training
        if isinstance(layer, tuple(QUANT_LAYERS.values())) and args and id(args[0]) in scales:
            kwargs["input_scale"] = scales[id(args[0])]
        out = layer(*args, **kwargs)
        if isinstance(original, SAME_SCALE) and args and id(args[0]) in scales:
            scales[id(out)] = scales[id(args[0])]
            kept.append(out)
        if _is_softmax(original):
            return ActivationQuantizer(momentum, fixed_range=(0.0, 255.0 / 256.0),
                                       source=layer.name, name=f"{layer.name}_quant")(out)
        if isinstance(layer, tuple(QUANT_LAYERS.values())) and _activation_name(
                original) == "softmax":
            out = quantize(out, source=layer.name, name=f"{layer.name}_logits_quant")
            out = keras.layers.Softmax(name=f"{layer.name}_softmax", dtype=layer.dtype_policy)(out)
            return ActivationQuantizer(momentum, fixed_range=(0.0, 255.0 / 256.0),
                                       source=layer.name, name=f"{layer.name}_quant")(out)
        if quantize_output(original) and _is_float(out):
            return quantize(out, source=layer.name, name=f"{layer.name}_quant")
        return out

    qat = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.name in folded_bn or not layer.weights:
            continue
        weights = layer.get_weights()
        if layer.name in fused:
            weights += fused[layer.name].get_weights()
        qat.get_layer(layer.name).set_weights(weights)
    return qat


def _batch_norms_to_fold(model, consumers) -> dict[str, keras.layers.Layer]:
    """Conv layers whose only consumer is a BatchNormalization on the channel axis."""
    out = {}
    for layer in model.layers:
        if type(layer) not in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
            continue
        cs = consumers.get(layer.name, [])
        if len(cs) != 1 or type(cs[0]) is not keras.layers.BatchNormalization:
            continue
        bn = cs[0]
        rank = len(layer.output.shape)
        channel = rank - 1 if layer.data_format == "channels_last" else 1
        if len(keras_private.inbound_nodes(bn)) == 1 and bn.axis % rank == channel:
            out[layer.name] = bn
    return out


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
    folded = {getattr(la, "batch_norm", None)["name"]: la for la in qat_model.layers
              if getattr(la, "batch_norm", None)}
    for layer in out.layers:
        if not layer.weights:
            continue
        n = len(layer.weights)
        if layer.name in folded:  # a batch norm folded into the conv before it
            layer.set_weights(folded[layer.name].get_weights()[-n:])
            continue
        source = qat_model.get_layer(layer.name)
        weights = source.get_weights()[:n]
        if isinstance(source, tuple(QUANT_LAYERS.values())):
            weights[0] = ops.convert_to_numpy(fake_quant_weights(
                ops.convert_to_tensor(weights[0]), axis=-1))
        layer.set_weights(weights)
    return out
