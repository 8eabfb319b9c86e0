"""Run a pipelines module in a TensorFlow-backend subprocess (conversion needs TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_module(module: str, request: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess:
    """`python -m <module> <workdir>/request.json` with `KERAS_BACKEND=tensorflow`."""
    path = workdir / "request.json"
    path.write_text(json.dumps(request))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", module, str(path)], env=env,
                          capture_output=True, text=True)

