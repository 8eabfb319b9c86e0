"""The figures a compression report compares: parameters, sparsity, file sizes."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kdl.io import file_sizes

__all__ = ["COLUMNS", "count_params", "file_sizes", "table"]


def count_params(model: keras.Model) -> dict[str, Any]:
    """`params`, `nonzero_params` and `sparsity` (zeros / params) over every weight."""
    params = nonzero = 0
    for v in model.weights:
        a = keras.ops.convert_to_numpy(v)
        params += a.size
        nonzero += int(np.count_nonzero(a))
    return {"params": int(params), "nonzero_params": int(nonzero),
            "sparsity": 1.0 - nonzero / max(params, 1)}


COLUMNS = [
    ("variant", "{}"), ("params", "{:,}"), ("nonzero_params", "{:,}"), ("sparsity", "{:.1%}"),
    ("keras_kb", "{:.1f}"), ("keras_gz_kb", "{:.1f}"), ("tflite_kb", "{:.1f}"),
    ("tflite_gz_kb", "{:.1f}"), ("accuracy", "{:.4f}"), ("delta_pt", "{:+.2f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of report rows (missing figures print as '-')."""
    cells = [[name for name, _ in COLUMNS]]
    for r in rows:
        cells.append([fmt.format(r[name]) if r.get(name) is not None else "-"
                      for name, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
