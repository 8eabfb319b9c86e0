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
        activation="relu", batch_norm=False, norm_position="before", name="mlp"):
    """A stack of Dense layers; images are flattened first.

    Args:
        input_shape: shape of one example.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        units: width of each hidden layer.
        dropout: dropout rate after each hidden layer (0 disables it).
        activation: hidden activation.
        batch_norm: a BatchNormalization layer in each hidden block.
        norm_position: "before" the activation (Ioffe & Szegedy; the Dense then has
            no bias) or "after" it. Dropout always comes last in the block.
    """
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    bn_first = batch_norm and norm_position == "before"
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, use_bias=not bn_first, name=f"dense_{i}")(x)
        if bn_first:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.Activation(activation, name=f"act_{i}")(x)
        if batch_norm and not bn_first:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
