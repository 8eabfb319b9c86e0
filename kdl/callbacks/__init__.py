"""Training callbacks, registered in `CALLBACKS` by name."""

from kdl.callbacks.nan_guard import NonFiniteLossError, TerminateOnNonFinite

__all__ = ["NonFiniteLossError", "TerminateOnNonFinite"]
