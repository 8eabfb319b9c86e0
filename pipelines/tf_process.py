"""Run a pipelines module in a TensorFlow-backend subprocess (conversion needs TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdl.io import atomic_write_json


def run_module(module: str, request: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess:
    """`python -m <module> <workdir>/request.json` with `KERAS_BACKEND=tensorflow`."""
    path = workdir / "request.json"
    path.write_text(json.dumps(request))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", module, str(path)], env=env,
                          capture_output=True, text=True)


def conversion_failed(out_dir: Path, stage: str, model: str, error: str,
                      crash: dict[str, Any] | None = None) -> Exception:
    """The stage failure for a conversion that failed or crashed the converter.

    Writes `<out_dir>/<format>.failed.json` (`<stage>.failed.json` when the
    format is not known): stage, model family, the error, and for a crash the
    exit status, signal and the converter's last words. Returns the
    `StageFailed` to raise: one message naming the format, the model and what
    the converter said last.
    """
    from pipelines.run import StageFailed

    fmt = (crash or {}).get("format") or stage
    path = Path(out_dir) / f"{fmt}.failed.json"
    atomic_write_json(path, {"stage": stage, "model": model, "error": error, **(crash or {})})
    return StageFailed(f"{stage} of model {model!r} failed: {error} (report: {path})")
