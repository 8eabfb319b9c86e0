"""Multilayer perceptron."""

import keras

from kdl.models.heads import output_head
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"units": (8,), "dropout": 0.0},
    "default": {"units": (128, 64), "dropout": 0.1},
}


@MODELS.register("mlp", presets=PRESETS, tasks=("classification", "regression"))
def mlp(input_shape, num_outputs, *, task="classification", units=(128, 64), dropout=0.1,
        activation="relu", batch_norm=False, name="mlp"):
    """A stack of Dense layers; images are flattened first.

    Args:
        input_shape: shape of one example.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        units: width of each hidden layer.
        dropout: dropout rate after each hidden layer (0 disables it).
        activation: hidden activation.
        batch_norm: BatchNormalization before each activation.
    """
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, use_bias=not batch_norm, name=f"dense_{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.Activation(activation, name=f"act_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
