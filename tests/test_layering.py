"""The import graph: the library never imports the pipeline; stages import only the shared module.

Checked by inspection (an AST scan of the source) and by the interpreter:
tests/test_public_api.py imports every kdl module in a fresh process (the one
that loads a saved model after `import kdl`) and asserts no `pipelines` module
was loaded.
"""

import ast
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
def test_stages_import_the_shared_module_not_each_other():
    stages = ROOT / "pipelines" / "stages"
    for path in sorted(stages.glob("*.py")):
        others = [n for n in _imports(path) if n.startswith("pipelines.stages.")
                  and not n.startswith("pipelines.stages.common")]
        assert not others, f"{path.name} imports another stage: {others}"
