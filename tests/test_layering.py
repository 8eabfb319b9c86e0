"""The import graph: the library never imports the pipeline; stages import only the shared module.

Checked by inspection (an AST scan of the source) and by the interpreter
(importing every kdl module in a fresh process loads no `pipelines` module).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str | None = None) -> list[str]:
    """Every module a file imports, anywhere in it (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def _is_pipeline(name: str) -> bool:
    return name == "pipelines" or name.startswith("pipelines.")


@pytest.mark.once
def test_the_scan_sees_a_pipeline_import(tmp_path):
    """The gate can fail: imports inside functions and aliased ones are seen."""
    for text in ("def f():\n    from pipelines.config import STAGES\n",
                 "import pipelines.run as r\n", "from pipelines import run\n"):
        probe = tmp_path / "probe.py"
        probe.write_text(text)
        assert [n for n in _imports(probe, "kdl.export") if _is_pipeline(n)], text


@pytest.mark.once
def test_library_source_never_imports_the_pipeline():
    offenders = {str(p.relative_to(ROOT)): [n for n in _imports(p) if _is_pipeline(n)]
                 for p in sorted((ROOT / "kdl").rglob("*.py"))}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"kdl/ imports the pipeline: {offenders}"


@pytest.mark.once
def test_importing_every_library_module_loads_no_pipeline_module():
    # Not imported here (the source scan covers them): the per-backend modules, which
    # kdl.backend imports for the process's backend, and the tfmot worker script, which
    # switches tf.keras to Keras 2 for its whole process.
    skip = {"kdl.backend._jax", "kdl.backend._tensorflow", "kdl.backend._torch",
            "kdl.compress._tfmot_worker"}
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "kdl").rglob("*.py"))
    modules = [m for m in modules if m not in skip]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'pipelines')\n"
            "print('PIPELINE', bad)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PIPELINE []" in proc.stdout, proc.stdout


@pytest.mark.once
def test_stages_import_the_shared_module_not_each_other():
    stages = ROOT / "pipelines" / "stages"
    for path in sorted(stages.glob("*.py")):
        others = [n for n in _imports(path) if n.startswith("pipelines.stages.")
                  and not n.startswith("pipelines.stages.common")]
        assert not others, f"{path.name} imports another stage: {others}"
