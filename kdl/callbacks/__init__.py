"""Training callbacks, registered by name in `CALLBACKS`."""

from kdl.callbacks.grad_stats import GradientStats, gradient_norms
from kdl.callbacks.optim import ReduceLROnPlateau, optimizer_options

__all__ = ["GradientStats", "ReduceLROnPlateau", "gradient_norms", "optimizer_options"]
