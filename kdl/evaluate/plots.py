"""Figures of an evaluation (matplotlib, headless), each written to a PNG path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdl.io import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _image(x: np.ndarray) -> np.ndarray:
    """One example as a displayable (h, w) or (h, w, 3) array scaled to [0, 1]."""
    x = np.asarray(x, "float32")
    x = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def confusion(counts: Sequence, normalized: Sequence, labels: list[str], path: Path,
              title: str = "") -> Path:
    """Counts and row-normalized confusion matrices side by side."""
    plt = _pyplot()
    counts, normalized = np.asarray(counts), np.asarray(normalized)
    n = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(2 + 0.9 * n, 1.2 + 0.45 * n))
    for ax, m, fmt, name in ((axes[0], counts, "d", "counts"),
                             (axes[1], normalized, ".2f", "normalized by true class")):
        ax.imshow(m, cmap="Blues")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels,
               xlabel="predicted", ylabel="true", title=f"{title} {name}".strip())
    fig.tight_layout()
    return save_figure(fig, path)


def roc_pr(curves: list[dict[str, Any]], labels: list[str], path: Path) -> Path:
    """One-vs-rest ROC and precision-recall curves, one line per class."""
    plt = _pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    for c, name in zip(curves, labels, strict=True):
        if c["fpr"] is None:
            continue
        roc.plot(c["fpr"], c["tpr"], lw=1, label=f"{name} ({c['roc_auc']:.3f})")
        pr.plot(c["recall"], c["precision"], lw=1,
                label=f"{name} ({c['average_precision']:.3f})")
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(xlabel="false positive rate", ylabel="true positive rate",
            title="ROC, one-vs-rest (AUC)")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall (AP)")
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def reliability(before: dict[str, Any], after: dict[str, Any], ece: tuple[float, float],
                temperature: float, path: Path) -> Path:
    """Reliability diagrams before and after temperature scaling (bins of confidence)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, b, e, name in ((axes[0], before, ece[0], "before"),
                           (axes[1], after, ece[1], f"after (T = {temperature:.3f})")):
        edges = np.asarray(b["edges"])
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        acc = np.nan_to_num(np.asarray(b["accuracy"], "float64"))
        ax.bar(centers, acc, width=width, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
        ax.set(xlabel="confidence", title=f"{name}: ECE {e:.4f}", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_formats(per_format: dict[str, dict[str, Any]], path: Path,
                      metric: str = "f1") -> Path:
    """Per-class `metric` of every format (grouped bars): where quantization costs."""
    plt = _pyplot()
    names = list(per_format)
    labels = [r["label"] for r in per_format[names[0]]["per_class"]]
    x = np.arange(len(labels))
    w = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels) * len(names) / 2), 3.8))
    for i, name in enumerate(names):
        vals = [r[metric] for r in per_format[name]["per_class"]]
        ax.bar(x + (i - (len(names) - 1) / 2) * w, vals, w, label=name)
    lo = min(r[metric] for f in per_format.values() for r in f["per_class"])
    ax.set(xticks=x, xticklabels=labels, ylabel=metric, ylim=(max(0.0, lo - 0.05), 1.0),
           title=f"per-class {metric} by format (test)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def image_grid(images: np.ndarray, titles: list[str], path: Path, cols: int = 8,
               title: str = "") -> Path:
    """Images in a grid, each with a caption (e.g. misclassified: true -> predicted)."""
    plt = _pyplot()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(_image(img), cmap="gray")
        ax.set_title(t, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def attribution_grid(images: np.ndarray, maps: dict[str, np.ndarray], captions: list[str],
                     path: Path) -> Path:
    """Rows: examples; columns: the image, then each method's map overlaid on it."""
    plt = _pyplot()
    n, methods = len(images), list(maps)
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(1.6 * (1 + len(methods)), 1.6 * n),
                             squeeze=False)
    for i in range(n):
        base = _image(images[i])
        axes[i, 0].imshow(base, cmap="gray")
        axes[i, 0].set_title(captions[i], fontsize=7)
        for j, name in enumerate(methods):
            m = np.abs(np.asarray(maps[name][i], "float32"))
            m = m.max(axis=-1) if m.ndim == 3 else m  # channels: the strongest
            axes[i, j + 1].imshow(base, cmap="gray")
            axes[i, j + 1].imshow(_image(m), cmap="jet", alpha=0.5)
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def robustness(report: dict[str, Any], path: Path) -> Path:
    """Accuracy vs eps (FGSM, PGD) and vs noise sigma, one panel."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(report["epsilons"], report["fgsm"], "o-", label="FGSM")
    ax.plot(report["epsilons"], report["pgd"], "s-", label=f"PGD ({report['pgd_steps']} steps)")
    ax.plot(report["noise_sigmas"], report["noise"], "^--", label="Gaussian noise (sigma)")
    ax.axhline(report["fgsm"][0] / 2, color="gray", lw=0.8, ls=":", label="half of clean")
    ax.set(xlabel="epsilon / sigma (input units)", ylabel="accuracy", ylim=(0, 1.02),
           title=f"robustness ({report['examples']} test examples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def feature_bars(rows: dict[str, Sequence[float]], features: list[str], path: Path,
                 title: str, errors: dict[str, Sequence[float]] | None = None) -> Path:
    """Horizontal bars per feature, one series per method (permutation, IG, SHAP)."""
    plt = _pyplot()
    y = np.arange(len(features))
    h = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 1 + 0.35 * len(features) * max(1, len(rows)) / 1.5))
    for i, (name, vals) in enumerate(rows.items()):
        err = None if errors is None else errors.get(name)
        ax.barh(y + (i - (len(rows) - 1) / 2) * h, vals, h, xerr=err, label=name)
    ax.set(yticks=y, yticklabels=features, title=title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def fairness(per_group: dict[str, dict[str, float]], path: Path, title: str = "") -> Path:
    """Per-group accuracy, selection rate, TPR and FPR."""
    plt = _pyplot()
    keys = ("accuracy", "selection_rate", "tpr", "fpr")
    groups = list(per_group)
    x = np.arange(len(keys))
    w = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, g in enumerate(groups):
        ax.bar(x + (i - (len(groups) - 1) / 2) * w,
               [np.nan_to_num(per_group[g][k]) for k in keys], w, label=f"group {g}")
    ax.set(xticks=x, xticklabels=keys, ylim=(0, 1), title=title or "per-group rates (test)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def residuals(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    """Predicted vs true, and residual vs predicted (regression)."""
    plt = _pyplot()
    t, p = np.asarray(y_true, "float64").ravel(), np.asarray(y_pred, "float64").ravel()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.scatter(t, p, s=6, alpha=0.6)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    a.plot([lo, hi], [lo, hi], "k:")
    a.set(xlabel="true", ylabel="predicted", title="predicted vs true (test)")
    b.scatter(p, p - t, s=6, alpha=0.6)
    b.axhline(0, color="k", lw=0.8)
    b.set(xlabel="predicted", ylabel="residual (predicted - true)", title="residuals")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
