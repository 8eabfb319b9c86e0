"""Training curves and confusion matrices as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdl.io import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], path: Path) -> Path:
    """One panel per metric (train and val together), epochs on the x axis."""
    plt = _pyplot()
    names = [k for k in history if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="val")
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str],
                     path: Path) -> np.ndarray:
    """Counts[i, j] = examples of class i predicted as j; saved as an annotated heatmap."""
    plt = _pyplot()
    n = len(labels)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * n, 0.8 + 0.45 * n))
    ax.imshow(counts, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.tight_layout()
    save_figure(fig, path)
    return counts


def image_batch(ds, path: Path, title: str, max_images: int = 32) -> None:
    """The first batch of an `(x, y)` image dataset as a PNG grid (each image min-max
    scaled for display, so normalized inputs show too)."""
    x, _ = next(iter(ds.take(1).as_numpy_iterator()))
    plt = _pyplot()
    x = np.asarray(x[:max_images], "float32")
    cols = min(8, len(x))
    rows = -(-len(x) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img in zip(axes.ravel(), x, strict=False):
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
