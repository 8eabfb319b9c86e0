"""Temporal convolutional network (Bai et al. 2018): dilated causal residual blocks."""

import keras

from kdl.models.heads import output_head
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"filters": 4, "dilations": (1, 2), "kernel_size": 2},
    "default": {"filters": 32, "dilations": (1, 2, 4, 8), "kernel_size": 3, "dropout": 0.1},
}


def tcn_block(x, filters, kernel_size, dilation, dropout, name):
    """Two dilated CAUSAL convolutions (left padding only) and a residual connection."""
    y = x
    for i in range(2):
        y = keras.layers.Conv1D(filters, kernel_size, dilation_rate=dilation, padding="causal",
                                name=f"{name}_conv{i + 1}")(y)
        y = keras.layers.LayerNormalization(name=f"{name}_norm{i + 1}")(y)
        y = keras.layers.ReLU(name=f"{name}_relu{i + 1}")(y)
        if dropout:
            y = keras.layers.SpatialDropout1D(dropout, name=f"{name}_dropout{i + 1}")(y)
    if x.shape[-1] != filters:
        x = keras.layers.Conv1D(filters, 1, name=f"{name}_proj")(x)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, y]))


@MODELS.register("tcn", presets=PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (6, 2)})
def tcn(input_shape, num_outputs, *, task="classification", filters=32,
        dilations=(1, 2, 4, 8), kernel_size=3, dropout=0.0, name="tcn"):
    """A TCN over a `(length, features)` sequence; the head reads the last step.

    Every convolution pads on the left only (`padding="causal"`), so the
    feature at time t depends on inputs at times <= t (layer "sequence" is the
    causal feature sequence). The receptive field is
    `1 + 2 (kernel_size - 1) sum(dilations)` steps.

    Args:
        input_shape: `(length, features)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        filters: channels of every block.
        dilations: one block per dilation rate.
        kernel_size: convolution width.
        dropout: spatial dropout inside the blocks.
    """
    if len(input_shape) != 2:
        raise ValueError(f"tcn needs sequence input (length, features), got {input_shape}")
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    for d in dilations:
        x = tcn_block(x, filters, kernel_size, d, dropout, f"block_d{d}")
    x = keras.layers.Identity(name="sequence")(x)
    x = x[:, -1]
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)


def receptive_field(kernel_size: int, dilations) -> int:
    """Steps of input that one output step sees."""
    return 1 + 2 * (kernel_size - 1) * sum(dilations)
