"""The model zoo. Importing this package registers every family in `MODELS`.

A supervised model entry is a function
`build(input_shape, num_outputs, *, task="classification", **preset) -> keras.Model`
registered with `presets` (a `tiny` one always) and the `tasks` it supports.
Classifiers end in a float32 softmax; regressors in a float32 linear layer.
"""

from kdl.models import (  # noqa: F401
    cnn,
    contrastive,
    dqn,
    gcn,
    generative,
    mlp,
    mobile,
    resnet,
    rnn,
    tcn,
    text,
    transformer,
)
from kdl.models.heads import output_head
from kdl.registry import MODELS


def build_model(name: str, input_shape, num_outputs: int, *, task: str = "classification",
                preset: str = "default", **overrides):
    """Build a registered model: its preset's arguments, then `overrides`."""
    entry = MODELS.get(name)
    tasks = entry.spec.tasks
    if tasks and task not in tasks:
        raise ValueError(f"model {name!r} does not do {task!r}; it does {', '.join(tasks)}")
    return MODELS.build(name, tuple(input_shape), num_outputs, task=task, preset=preset,
                        **overrides)


__all__ = ["MODELS", "build_model", "output_head"]
