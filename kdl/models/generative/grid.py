"""A PNG grid of generated images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_image_grid(images: np.ndarray, path: str | Path, columns: int = 8) -> Path:
    """Write `(n, h, w, c)` images (any range; each scaled to [0, 1]) as one PNG grid.

    The file is written to a temporary name and renamed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images, "float32")
    if images.ndim != 4:
        raise ValueError(f"images must be (n, height, width, channels), got {images.shape}")
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    images = (images - lo) / np.maximum(hi - lo, 1e-8)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + 1), columns * (w + 1), c), "float32")
    for i, img in enumerate(images):
        r, q = divmod(i, columns)
        grid[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = img
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    plt.imsave(tmp, grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None)
    os.replace(tmp, path)
    return path
