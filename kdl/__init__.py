"""kdl: backend-agnostic Keras 3 models, training and export for mobile apps.

`import kdl` registers every serializable kdl object with Keras (layers,
schedules, losses, models, optimizers, the compression layers), so a run's
`model.keras` loads in plain Keras:

    import keras
    import kdl  # noqa: F401  (registers kdl's classes)

    model = keras.saving.load_model("saved_models/<experiment>/<run>/model.keras")

What a library user imports (the pipeline, `python -m pipelines`, is built on these):

- registries: `MODELS`, `DATASETS`, `SCHEDULES`, `CALLBACKS` (build by name);
- `build_model`, `load_splits`, the config sections `DataConfig`, `ModelConfig`,
  `TrainConfig` and `ConfigError`;
- training: `prepare`, `compile_for`, `fit`, `evaluate_split` (the task metrics of a
  split, `kdl.training.evaluate`), `predict`;
- subpackages: `kdl.layers`, `kdl.losses`, `kdl.schedules`, `kdl.callbacks`,
  `kdl.optimizers`, `kdl.compress`, `kdl.data`, `kdl.models`, `kdl.export`,
  `kdl.evaluate` (metrics, calibration, explanations, robustness, fairness).
"""

__version__ = "0.1.0"

# Imported for their registrations (keras serializables and the registries).
from kdl import (  # noqa: E402
    callbacks,
    compress,
    data,
    evaluate,  # the package (kdl.evaluate.*); a split's metrics: evaluate_split
    layers,
    losses,
    models,
    optimizers,
    schedules,
)
from kdl.backend import optimizers as _backend_optimizers  # noqa: E402, F401
from kdl.compress import distill as _distill  # noqa: E402, F401
from kdl.compress import qat as _qat  # noqa: E402, F401
from kdl.config import ConfigError, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from kdl.data import load_splits  # noqa: E402
from kdl.models import build_model  # noqa: E402
from kdl.registry import CALLBACKS, DATASETS, MODELS, SCHEDULES  # noqa: E402
from kdl.training import compile_for, fit, predict, prepare  # noqa: E402
from kdl.training import evaluate as evaluate_split  # noqa: E402

__all__ = [
    "CALLBACKS",
    "DATASETS",
    "MODELS",
    "SCHEDULES",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "__version__",
    "build_model",
    "callbacks",
    "compile_for",
    "compress",
    "data",
    "evaluate",
    "evaluate_split",
    "fit",
    "layers",
    "load_splits",
    "losses",
    "models",
    "optimizers",
    "predict",
    "prepare",
    "schedules",
]
