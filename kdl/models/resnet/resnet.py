"""ResNet (He et al. 2015): basic and bottleneck residual blocks."""

import keras

from kdl.models.heads import output_head
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"block": "basic", "stage_blocks": (1, 1), "stage_filters": (4, 8), "stem": "cifar"},
    # ResNet-20 of the paper's CIFAR section: 3 stages of 3 basic blocks, 16/32/64 wide.
    "default": {"block": "basic", "stage_blocks": (3, 3, 3), "stage_filters": (16, 32, 64),
                "stem": "cifar"},
    "cifar20": {"block": "basic", "stage_blocks": (3, 3, 3), "stage_filters": (16, 32, 64),
                "stem": "cifar"},
    "resnet18": {"block": "basic", "stage_blocks": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "stage_blocks": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "stage_blocks": (3, 4, 6, 3)},
}


def _conv_bn(x, filters, kernel, stride, name, relu=True, zero_gamma=False):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(
        epsilon=1e-5, gamma_initializer="zeros" if zero_gamma else "ones", name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def basic_block(x, filters, stride, name):
    """Two 3x3 convolutions; a 1x1 projection shortcut when the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_proj", relu=False)
    y = _conv_bn(x, filters, 3, stride, f"{name}_a")
    y = _conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def bottleneck_block(x, filters, stride, name, expansion=4):
    """1x1 reduce, 3x3 (strided, as in "ResNet v1.5"), 1x1 expand to 4x filters."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters * expansion:
        shortcut = _conv_bn(x, filters * expansion, 1, stride, f"{name}_proj", relu=False)
    y = _conv_bn(x, filters, 1, 1, f"{name}_a")
    y = _conv_bn(y, filters, 3, stride, f"{name}_b")
    y = _conv_bn(y, filters * expansion, 1, 1, f"{name}_c", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


@MODELS.register("resnet", presets=PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (8, 8, 1)})
def resnet(input_shape, num_outputs, *, task="classification", block="basic",
           stage_blocks=(2, 2, 2, 2), stage_filters=(64, 128, 256, 512), stem="imagenet",
           name="resnet"):
    """A ResNet: stem, stages of residual blocks (each after the first halves the
    resolution), global average pooling, head.

    Presets `resnet18`, `resnet34`, `resnet50` are the paper's ImageNet layouts
    (trainable parameters for 224x224x3 and 1000 classes: 11,689,512,
    21,797,672, 25,557,032, as torchvision counts them); `cifar20` (the default)
    is the paper's small CIFAR-style network with a 3x3 stem.

    Args:
        input_shape: `(height, width, channels)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        block: "basic" (two 3x3) or "bottleneck" (1x1-3x3-1x1, 4x expansion).
        stage_blocks: number of blocks in each stage.
        stage_filters: width of each stage.
        stem: "imagenet" (7x7/2 conv and 3x3/2 max-pool) or "cifar" (3x3 conv).
    """
    if len(input_shape) != 3:
        raise ValueError(f"resnet needs image input (height, width, channels), got {input_shape}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    if len(stage_blocks) != len(stage_filters):
        raise ValueError("stage_blocks and stage_filters need one entry per stage")
    inputs = keras.Input(shape=input_shape, name="inputs")
    if stem == "imagenet":
        x = _conv_bn(inputs, stage_filters[0], 7, 2, "stem")
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    else:
        x = _conv_bn(inputs, stage_filters[0], 3, 1, "stem")
    fn = BLOCKS[block]
    for s, (n, f) in enumerate(zip(stage_blocks, stage_filters, strict=True)):
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            x = fn(x, f, stride, f"stage{s + 1}_block{b + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
