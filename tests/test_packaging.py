"""`pip install kdl` is the library; the extras (`kdl[export]`, `[tracking]`, `[tune]`,
`[rl]`, `[all]`) are the rest. Checked by inspection: every package a kdl/ module imports
at module level (what `import kdl...` needs) is a core dependency in pyproject.toml, so no
extra is imported at module level (they are imported inside the function that needs
them). Uninstalling packages to try it is not possible in the shared test venv."""

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Per-backend code (loaded only with its backend, whose package the user chose) and the
# tfmot worker script (its own TF_USE_LEGACY_KERAS process, tfmot installed by `make`).
EXEMPT = {"kdl/backend/_jax.py": {"jax"}, "kdl/backend/_torch.py": {"torch"},
          "kdl/compress/_tfmot_worker.py": {"tensorflow_model_optimization", "tf_keras"}}


def _dist(requirement: str) -> str:
    return re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported in the module body (also under a module-level
    `if`/`try`), not inside functions or classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers")
                     for n in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("kdl", "")}


@functools.cache
def _provided() -> dict[str, list[str]]:
    return md.packages_distributions()  # reads every installed package's file list: once


def _third_party(path: Path) -> dict[str, set[str]]:
    """Module-level imports of a file -> the distributions that provide them."""
    provided = _provided()
    return {name: {d.lower().replace("_", "-") for d in provided.get(name, [name])}
            for name in _module_level_imports(path)}


@pytest.mark.once
def test_the_extras_are_declared():
    project = _project()
    extras = project["optional-dependencies"]
    assert {"export", "tracking", "tune", "rl", "all"} <= set(extras)
    assert extras["all"] == ["kdl[export,tracking,tune,rl]"]
    core = {_dist(r) for r in project["dependencies"]}
    for extra in ("export", "tracking", "tune", "rl"):
        assert not core & {_dist(r) for r in extras[extra]}, extra
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'pip install -q -e "\.\[all,', makefile), "make must install kdl[all]"


@pytest.mark.once
def test_the_scan_sees_a_module_level_import_of_an_extra(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\ntry:\n    import mlflow\nexcept ImportError:\n    pass\n"
                     "def f():\n    import optuna\n")
    assert _module_level_imports(probe) == {"mlflow"}
    assert "mlflow" in _third_party(probe)["mlflow"]


@pytest.mark.once
def test_library_modules_import_only_core_dependencies_at_module_level():
    core = {_dist(r) for r in _project()["dependencies"]}
    offenders = {}
    for path in sorted((ROOT / "kdl").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        bad = {name: dists for name, dists in _third_party(path).items()
               if not dists & core and name not in EXEMPT.get(rel, set())}
        if bad:
            offenders[rel] = sorted(bad)
    assert not offenders, ("kdl/ modules importing a package that `pip install kdl` does not "
                           f"bring, at module level (import it inside the function, or make "
                           f"it a core dependency): {offenders}")
