"""kdl: backend-agnostic Keras 3 models, training and export for mobile apps."""

__version__ = "0.1.0"
