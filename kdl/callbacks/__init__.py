"""Training callbacks, registered in `CALLBACKS` by name."""

from kdl.callbacks.grad_stats import GradientStats, gradient_norms
from kdl.callbacks.nan_guard import NonFiniteLossError, TerminateOnNonFinite
from kdl.callbacks.optim import ReduceLROnPlateau, optimizer_options

__all__ = [
    "GradientStats",
    "NonFiniteLossError",
    "ReduceLROnPlateau",
    "TerminateOnNonFinite",
    "gradient_norms",
    "optimizer_options",
]
