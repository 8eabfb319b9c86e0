"""The classic CNNs: LeNet-5, AlexNet and VGG-style ConvBlock nets."""

import keras

from kdl.models.heads import output_head
from kdl.registry import MODELS


def _image_input(input_shape, model: str):
    if len(input_shape) != 3:
        raise ValueError(f"{model} needs image input (height, width, channels), "
                         f"got {tuple(input_shape)}")
    return keras.Input(shape=input_shape, name="inputs")


LENET_PRESETS = {
    "tiny": {"filters": (2, 4), "units": (8, 8)},
    "default": {"filters": (6, 16), "units": (120, 84)},
}


@MODELS.register("lenet5", presets=LENET_PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (8, 8, 1)})
def lenet5(input_shape, num_outputs, *, task="classification", filters=(6, 16),
           units=(120, 84), activation="tanh", fit="pad", name="lenet5"):
    """LeNet-5 (LeCun et al. 1998) on its 32x32 input.

    conv 5x5 (6) - avg-pool 2 - conv 5x5 (16) - avg-pool 2 - dense 120 - dense 84 -
    head. On 32x32x1 with 10 classes it has the reference 61,706 parameters.
    Smaller images are zero-padded to 32x32 (centred) or, with `fit="resize"`,
    bilinearly resized; they are never fed at their own size, where the second
    convolution would leave too little of the image.

    Args:
        input_shape: `(height, width, channels)`, at most 32x32.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        filters: channels of the two convolutions.
        units: widths of the two hidden dense layers.
        activation: hidden activation ("tanh" as in the paper, or "relu").
        fit: how smaller images reach 32x32: "pad" or "resize".
    """
    inputs = _image_input(input_shape, "lenet5")
    h, w = int(input_shape[0]), int(input_shape[1])
    if h > 32 or w > 32:
        raise ValueError(f"lenet5 takes images up to 32x32, got {h}x{w}: resize them first "
                         "or use resnet/vgg")
    if fit not in ("pad", "resize"):
        raise ValueError(f"fit must be 'pad' or 'resize', got {fit!r}")
    x = inputs
    if (h, w) != (32, 32):
        if fit == "pad":
            top, left = (32 - h) // 2, (32 - w) // 2
            x = keras.layers.ZeroPadding2D(((top, 32 - h - top), (left, 32 - w - left)),
                                           name="pad_to_32")(x)
        else:
            x = keras.layers.Resizing(32, 32, name="resize_to_32")(x)
    x = keras.layers.Conv2D(filters[0], 5, activation=activation, name="c1")(x)
    x = keras.layers.AveragePooling2D(2, name="s2")(x)
    x = keras.layers.Conv2D(filters[1], 5, activation=activation, name="c3")(x)
    x = keras.layers.AveragePooling2D(2, name="s4")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(units[0], activation=activation, name="c5")(x)
    x = keras.layers.Dense(units[1], activation=activation, name="f6")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)


ALEXNET_PRESETS = {
    "tiny": {"filters": (4, 4, 4, 4, 4), "kernels": (3, 3, 3, 3, 3), "stem_stride": 1,
             "units": (8, 8), "dropout": 0.0, "pool_padding": "same"},
    "small": {"filters": (32, 64, 96, 96, 64), "kernels": (3, 3, 3, 3, 3), "stem_stride": 1,
              "units": (256, 256), "dropout": 0.3, "pool_padding": "same"},
    "default": {},  # the reference layout for 227x227x3 (62,378,344 params for 1000 classes)
}


@MODELS.register("alexnet", presets=ALEXNET_PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (8, 8, 3)})
def alexnet(input_shape, num_outputs, *, task="classification",
            filters=(96, 256, 384, 384, 256), kernels=(11, 5, 3, 3, 3), stem_stride=4,
            units=(4096, 4096), dropout=0.5, pool_padding="valid", batch_norm=False,
            name="alexnet"):
    """AlexNet (Krizhevsky et al. 2012), single-tower, without LRN.

    Five convolutions (max-pool 3/2 after the 1st, 2nd and 5th), two dropout
    dense layers, head. The default is the reference layout for 227x227x3.

    Args:
        input_shape: `(height, width, channels)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        filters: channels of the five convolutions.
        kernels: kernel sizes of the five convolutions.
        stem_stride: stride of the first convolution (4 in the paper).
        units: widths of the two hidden dense layers.
        dropout: dropout rate before each hidden dense layer.
        pool_padding: "valid" (paper) or "same" (keeps small images alive).
        batch_norm: BatchNormalization after each convolution.
    """
    inputs = _image_input(input_shape, "alexnet")
    x = inputs
    for i, (f, k) in enumerate(zip(filters, kernels, strict=True)):
        stride = stem_stride if i == 0 else 1
        padding = "valid" if i == 0 else "same"
        x = keras.layers.Conv2D(f, k, strides=stride, padding=padding, use_bias=not batch_norm,
                                name=f"conv{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if i in (0, 1, 4):
            x = keras.layers.MaxPooling2D(3, strides=2, padding=pool_padding,
                                          name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, u in enumerate(units):
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{i + 6}")(x)
        x = keras.layers.Dense(u, activation="relu", name=f"fc{i + 6}")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)


VGG_PRESETS = {
    "tiny": {"blocks": ((4, 1), (8, 1)), "dropout": 0.0},
    "default": {"blocks": ((32, 2), (64, 2), (128, 2)), "dropout": 0.3},
    "vgg16": {"blocks": ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), "dropout": 0.5},
}


@MODELS.register("vgg", presets=VGG_PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (8, 8, 1)})
def vgg(input_shape, num_outputs, *, task="classification", blocks=((32, 2), (64, 2), (128, 2)),
        batch_norm=True, dropout=0.3, name="vgg"):
    """A VGG-style net: ConvBlocks of 3x3 convolutions, global average pooling, head.

    Each block is `n` x (conv 3x3 [- BN] - ReLU) then a 2x2 max-pool; the pool
    is left out once the feature map is 1 pixel, so small images (digits' 8x8)
    go through any depth.

    Args:
        input_shape: `(height, width, channels)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        blocks: `(filters, convolutions)` per block.
        batch_norm: BatchNormalization after each convolution.
        dropout: dropout rate before the head.
    """
    inputs = _image_input(input_shape, "vgg")
    x = inputs
    size = min(int(input_shape[0]), int(input_shape[1]))
    for b, (f, n) in enumerate(blocks):
        for c in range(n):
            x = keras.layers.Conv2D(f, 3, padding="same", use_bias=not batch_norm,
                                    name=f"block{b + 1}_conv{c + 1}")(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"block{b + 1}_bn{c + 1}")(x)
            x = keras.layers.ReLU(name=f"block{b + 1}_relu{c + 1}")(x)
        if size >= 2:
            x = keras.layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
            size //= 2
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
