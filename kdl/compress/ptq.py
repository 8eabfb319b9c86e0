"""Post-training quantization that stays in Keras: `model.quantize("int8" | "int4")`.

Keras quantizes the weights of Dense, EinsumDense and Embedding layers only
(Conv layers stay float), and a Keras-quantized model is served from Keras or
a SavedModel: it does not convert to TFLite. For TFLite dynamic-range, float16
and full-int8 files use `kdl.export` (formats `tflite_dynamic`, `tflite_fp16`,
`tflite_int8`).
"""

from __future__ import annotations

import keras

from kdl.backend import keras_private

KERAS_QUANTIZABLE = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
MODES = ("int8", "int4")


def keras_quantizable_layers(model: keras.Model) -> list[str]:
    """Names of the layers `model.quantize` would quantize."""
    return [la.name for la in keras_private.flatten_layers(model, include_self=False)
            if isinstance(la, KERAS_QUANTIZABLE)]


def keras_quantize(model: keras.Model, mode: str = "int8") -> list[str]:
    """Quantize `model` in place with Keras (`model.quantize(mode)`); return the layers done.

    Raises:
        ValueError: an unknown mode, or a model with nothing Keras can quantize
            (only Conv layers, say).
    """
    if mode not in MODES:
        raise ValueError(f"Keras quantization mode must be one of {MODES}, got {mode!r}")
    layers = keras_quantizable_layers(model)
    if not layers:
        kinds = sorted({type(la).__name__
                        for la in keras_private.flatten_layers(model, include_self=False)})
        raise ValueError(
            f"model {model.name!r} has no Dense, EinsumDense or Embedding layer, so Keras "
            f"model.quantize({mode!r}) does not apply (Keras does not quantize "
            f"{', '.join(kinds)}). Use the TFLite int8 export instead.")
    model.quantize(mode)
    return layers
