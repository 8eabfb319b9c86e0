"""The backend's own global random state, for checkpoints that resume exactly.

Keras layers draw from their `SeedGenerator` variables, which checkpoints save
with the model. PyTorch is the exception: `Dropout` without an explicit seed
draws from torch's global generator, so its state must be saved too.
"""

from __future__ import annotations

import keras
import numpy as np


def get_global_rng_state() -> np.ndarray | None:
    """The backend's global RNG state as a uint8 array (None where Keras owns all draws)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.get_rng_state().numpy().copy()
    return None


def set_global_rng_state(state: np.ndarray | None) -> None:
    """Restore what `get_global_rng_state` returned."""
    if state is None or keras.backend.backend() != "torch":
        return
    import torch

    torch.set_rng_state(torch.from_numpy(np.asarray(state, dtype="uint8")))
