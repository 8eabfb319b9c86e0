"""kdl pipelines: recipes -> stages (train, export, ...) -> run directory + MLflow.

Importing the package points JAX's persistent compilation cache at the
project's `.cache/jax` (git-ignored) unless the environment says otherwise, so
a second run compiles nothing the first one compiled. It must happen before
JAX is imported: the CLI and the tests' conftest import this package first.
Every compilation is cached (JAX's default keeps only those over 1 s; the
tiny models here compile in less, many times over).
"""

import os
from pathlib import Path

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[1] / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
