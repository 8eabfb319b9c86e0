"""Output heads shared by the supervised models."""

import keras


def output_head(x, num_outputs: int, task: str, name: str = "head"):
    """The last layer: float32 softmax for classification, float32 linear otherwise.

    It stays float32 under a mixed-precision policy so probabilities and the
    loss are computed at full precision.
    """
    if task == "classification":
        return keras.layers.Dense(num_outputs, activation="softmax", dtype="float32",
                                  name=name)(x)
    if task == "regression":
        return keras.layers.Dense(num_outputs, dtype="float32", name=name)(x)
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
