"""A small convolutional network for small images."""

import keras

from kdl.models.heads import output_head
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"filters": (4, 8), "dense": 16, "dropout": 0.0},
    "default": {"filters": (32, 64), "dense": 128, "dropout": 0.25},
}


@MODELS.register("cnn", presets=PRESETS, tasks=("classification", "regression"))
def cnn(input_shape, num_outputs, *, task="classification", filters=(32, 64), dense=128,
        dropout=0.25, kernel_size=3, name="cnn"):
    """Conv-BN-ReLU blocks, each halving the resolution, then a dense head.

    Args:
        input_shape: `(height, width, channels)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        filters: channels of each block (one 2x2 max-pool per block).
        dense: width of the hidden dense layer.
        dropout: dropout rate before the head.
        kernel_size: convolution kernel size.
    """
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image input (height, width, channels), got {input_shape}")
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, kernel_size, padding="same", use_bias=False,
                                name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, activation="relu", name="dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
