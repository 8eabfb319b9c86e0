"""Plot any learning-rate schedule to a PNG."""

from __future__ import annotations

import numpy as np
from keras import ops

from kdl.io import save_figure


def schedule_values(schedule, total_steps: int) -> np.ndarray:
    """The schedule at steps `0 .. total_steps - 1`, as a float NumPy array."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    steps = np.arange(total_steps, dtype="int32")
    if callable(schedule):
        values = schedule(ops.convert_to_tensor(steps))
        values = np.asarray(ops.convert_to_numpy(values), dtype="float64")
        if values.shape != steps.shape:  # a schedule that is not elementwise
            values = np.array([float(ops.convert_to_numpy(schedule(int(s)))) for s in steps])
        return values
    return np.full(total_steps, float(schedule))


def plot_schedule(schedule, total_steps: int, path: str, *, title: str | None = None) -> str:
    """Plot `schedule` over `total_steps` steps and write it to `path` (PNG).

    Args:
        schedule: a `LearningRateSchedule`, any callable of the step, or a float.
        total_steps: how many optimizer steps to draw.
        path: the PNG file; written to a temporary file, then renamed.
        title: plot title (default: the schedule's class name).

    Returns:
        `path`.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plot_schedule needs matplotlib: pip install matplotlib") from e
    values = schedule_values(schedule, total_steps)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(total_steps), values)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title or type(schedule).__name__)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path
