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


# ----------------------------------------------------------------------------- private Keras

QUARANTINE = ROOT / "kdl" / "backend" / "keras_private.py"
SCANNED = ("kdl", "pipelines", "benchmarks")


def _keras_private_names() -> set[str]:
    """Every `_name` (not dunder) a Keras model, layer, optimizer, variable or symbolic
    tensor has, read off live objects, so instance attributes (`_inbound_nodes`,
    `_learning_rate`, ...) are in, and a new Keras private name is in without a list."""
    import keras

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    objs = [inp, model, model.layers[1], model.optimizer, model.weights[0]]
    return {n for o in objs for n in dir(o) if n.startswith("_") and not n.startswith("__")}


def _private_keras_uses(path: Path, names: set[str]) -> list[str]:
    """`x._name` (x not self/cls/super()), `getattr(x, "_name")` and `keras.src` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [f"import {n}" for n in _imports(path, "kdl")
             if n == "keras.src" or n.startswith("keras.src.")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            v = node.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and getattr(v.func, "id", None) == "super":
                continue
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.once
def test_the_private_keras_scan_sees_each_kind_of_use(tmp_path):
    names = _keras_private_names()
    assert {"_inbound_nodes", "_keras_history", "_learning_rate", "_flatten_layers",
            "_trainable_variables", "_var_key", "_clip_gradients"} <= names
    for text in ("def f(m):\n    return m.optimizer._learning_rate\n",
                 "x = getattr(layer, '_inbound_nodes', [])\n",
                 "def f():\n    from keras.src.models.functional import Functional\n",
                 "import keras.src.testing\n"):
        probe = tmp_path / "probe.py"
        probe.write_text(text)
        assert _private_keras_uses(probe, names), text
    probe.write_text("class A:\n    def f(self):\n        return self._learning_rate\n")
    assert not _private_keras_uses(probe, names)


@pytest.mark.once
def test_private_keras_api_is_touched_only_in_keras_private():
    names = _keras_private_names()
    offenders = {}
    for d in SCANNED:
        for path in sorted((ROOT / d).rglob("*.py")):
            if path != QUARANTINE and (uses := _private_keras_uses(path, names)):
                offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, ("private Keras API outside kdl/backend/keras_private.py (add a "
                           f"function there, with the Keras version and a test): {offenders}")


# ----------------------------------------------------------------------------- MLflow

TRACKING = ROOT / "pipelines" / "tracking.py"
TRACKER_INTERNALS = {"client", "_client", "_safe", "_disable", "_experiment"}


def _mlflow_uses(path: Path) -> list[str]:
    """`import mlflow...` anywhere in the file, and `x.client` / `x._safe` (a tracker's
    MLflow client and failure policy) on anything but `self`."""
    found = [f"import {n}" for n in _imports(path, "pipelines")
             if n == "mlflow" or n.startswith("mlflow.")]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (isinstance(node, ast.Attribute) and node.attr in TRACKER_INTERNALS
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.once
def test_the_mlflow_scan_sees_each_kind_of_use(tmp_path):
    for text in ("def f():\n    from mlflow.exceptions import MlflowException\n",
                 "import mlflow\n", "def f(t):\n    return t.client.get_run('x')\n",
                 "def f(tracker):\n    return tracker._safe('x', print)\n"):
        probe = tmp_path / "probe.py"
        probe.write_text(text)
        assert _mlflow_uses(probe), text
    probe.write_text("class T:\n    def f(self):\n        return self.client\n")
    assert not _mlflow_uses(probe)


@pytest.mark.once
def test_tracking_is_the_only_mlflow_user():
    """kdl/, pipelines/ and benchmarks/ reach MLflow only through pipelines/tracking.py
    (its `Tracker` methods and functions): one place keeps the failure policy."""
    offenders = {}
    for d in SCANNED:
        for path in sorted((ROOT / d).rglob("*.py")):
            if path != TRACKING and (uses := _mlflow_uses(path)):
                offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, f"MLflow used outside pipelines/tracking.py: {offenders}"
