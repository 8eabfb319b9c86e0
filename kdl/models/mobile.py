"""Mobile image backbones from `keras.applications`, with a kdl classification head.

Families: `mobilenet_v2`, `mobilenet_v3_small`, `mobilenet_v3_large` (with
Keras's `minimalistic` option: no hard-swish, no squeeze-excite, 3x3 kernels),
`efficientnet_b0`, `efficientnet_v2_b0`. Every one takes RAW pixels in
[0, 255] (float32, RGB, NHWC): MobileNetV3 and EfficientNet rescale inside
(`include_preprocessing`), MobileNetV2 gets a `Rescaling(1/127.5, offset=-1)`
layer in front here. So the data stays unnormalized (`data.normalize: false`)
and an app, or a uint8-input int8 `.tflite`, feeds decoded pixels as they are.
`INPUT_RANGE` records this for the contract.

`bn_momentum` (every family) replaces the 0.999 that `keras.applications` gives
each BatchNormalization: right for fine-tuning pretrained statistics, far too slow
when training from scratch for a few hundred steps (the moving statistics stay
near their initial values and inference sees them; 0.9 to 0.99 there).

The backbone's layers are built on the model's own input (no nested model), so
pruning, QAT checks and the converter see every layer. Weights: `None` (the
default, offline), a local weights file, or "imagenet" (downloaded by Keras;
offline that fails with a message saying which file to place where).
"""

from __future__ import annotations

from pathlib import Path

import keras

from kdl.models.heads import output_head
from kdl.registry import MODELS

# What raw input each family takes, and where its rescaling happens.
INPUT_RANGE = {
    "mobilenet_v2": "[0, 255]; Rescaling(1/127.5, offset=-1) inside the model",
    "mobilenet_v3_small": "[0, 255]; Keras's include_preprocessing rescaling inside the model",
    "mobilenet_v3_large": "[0, 255]; Keras's include_preprocessing rescaling inside the model",
    "efficientnet_b0": "[0, 255]; Keras's Rescaling + Normalization inside the model",
    "efficientnet_v2_b0": "[0, 255]; Keras's include_preprocessing rescaling inside the model",
}


def _weights(weights: str | None, family: str):
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    p = Path(weights).expanduser()
    if not p.is_file():
        raise ValueError(f"{family}: weights must be none, imagenet or a weights file; "
                         f"{str(p)!r} does not exist")
    return str(p)


def _build(family: str, app, input_shape, num_outputs: int, task: str, weights, dropout: float,
           bn_momentum: float | None = None, **app_args) -> keras.Model:
    if len(input_shape) != 3 or min(input_shape[:2]) < 32:
        raise ValueError(f"{family} needs image input (height, width, channels) of at least "
                         f"32x32, got {tuple(input_shape)}")
    w = _weights(weights, family)
    if bn_momentum is not None and not 0 <= bn_momentum < 1:
        raise ValueError(f"{family}: bn_momentum must be in [0, 1), got {bn_momentum}")
    if w is not None and input_shape[-1] != 3:
        raise ValueError(f"{family}: pretrained weights take 3 channels (rgb), "
                         f"got {input_shape[-1]}")
    inputs = keras.Input(shape=tuple(input_shape), name="inputs")
    x = inputs
    if family == "mobilenet_v2":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(x)
    try:
        backbone = app(input_tensor=x, include_top=False, weights=w, pooling="avg", **app_args)
    except Exception as e:
        if w == "imagenet":
            raise ValueError(
                f"{family}: weights=imagenet could not be loaded ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); offline, place Keras's weights file in "
                "$KERAS_HOME/models (~/.keras/models) or use weights=none or a local file"
            ) from None
        raise
    if bn_momentum is not None:  # keras.applications builds every BatchNormalization at 0.999
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = backbone.output
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=family)


_V2 = {"tiny": {"alpha": 0.35}, "default": {"alpha": 1.0}, "small": {"alpha": 0.5}}
_V3 = {"tiny": {"alpha": 0.35, "minimalistic": True}, "default": {"alpha": 1.0},
       "small": {"alpha": 0.75}, "minimalistic": {"alpha": 1.0, "minimalistic": True}}
_EFF = {"tiny": {"dropout": 0.0}, "default": {"dropout": 0.2}}
TASKS = ("classification", "regression")
# A projection BN's beta shifts its channels by a constant; everything after it reaches the
# loss through a 1x1 conv and another BatchNorm, whose training-mode batch mean removes the
# shift again: its gradient is zero up to rounding (exactly zero on TensorFlow for some blocks).
HARNESS = {"input_shape": (32, 32, 3), "unchanged_ok": ("project_BN/beta", "project_bn/beta")}


@MODELS.register("mobilenet_v2", presets=_V2, tasks=TASKS, raw_pixels=True, harness=HARNESS)
def mobilenet_v2(input_shape, num_outputs, *, task="classification", alpha=1.0, weights=None,
                 dropout=0.2, bn_momentum=None):
    """MobileNetV2 (keras.applications, width `alpha`) + head; takes pixels in [0, 255]."""
    return _build("mobilenet_v2", keras.applications.MobileNetV2, input_shape, num_outputs,
                  task, weights, dropout, bn_momentum, alpha=alpha)


def _v3(family, app):
    def build(input_shape, num_outputs, *, task="classification", alpha=1.0,
              minimalistic=False, weights=None, dropout=0.2, bn_momentum=None):
        return _build(family, app, input_shape, num_outputs, task, weights, dropout,
                      bn_momentum, alpha=alpha, minimalistic=minimalistic,
                      include_preprocessing=True)

    build.__doc__ = (f"{app.__name__} (keras.applications, `alpha`, `minimalistic`) + head; "
                     "takes pixels in [0, 255].")
    return build


MODELS.register("mobilenet_v3_small", presets=_V3, tasks=TASKS, raw_pixels=True, harness=HARNESS)(
    _v3("mobilenet_v3_small", keras.applications.MobileNetV3Small))
MODELS.register("mobilenet_v3_large", presets=_V3, tasks=TASKS, raw_pixels=True, harness=HARNESS)(
    _v3("mobilenet_v3_large", keras.applications.MobileNetV3Large))


@MODELS.register("efficientnet_b0", presets=_EFF, tasks=TASKS, raw_pixels=True, harness=HARNESS)
def efficientnet_b0(input_shape, num_outputs, *, task="classification", weights=None,
                    dropout=0.2, bn_momentum=None):
    """EfficientNetB0 (keras.applications) + head; takes pixels in [0, 255]."""
    return _build("efficientnet_b0", keras.applications.EfficientNetB0, input_shape,
                  num_outputs, task, weights, dropout, bn_momentum)


@MODELS.register("efficientnet_v2_b0", presets=_EFF, tasks=TASKS, raw_pixels=True, harness=HARNESS)
def efficientnet_v2_b0(input_shape, num_outputs, *, task="classification", weights=None,
                       dropout=0.2, bn_momentum=None):
    """EfficientNetV2B0 (keras.applications) + head; takes pixels in [0, 255]."""
    return _build("efficientnet_v2_b0", keras.applications.EfficientNetV2B0, input_shape,
                  num_outputs, task, weights, dropout, bn_momentum, include_preprocessing=True)
