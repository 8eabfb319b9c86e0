"""`import kdl` is enough: it registers every serializable kdl object and exports the API."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Loads a model.keras in plain Keras after `import kdl` only, then imports every other kdl
# module and reports any kdl class that `import kdl` alone had not registered, and any
# pipeline module the library pulled in (the layering rule, tests/test_layering.py).
LOADER = """
import importlib, sys
import numpy as np
import keras
import kdl
model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.testing.assert_allclose(model.predict(x, verbose=0), np.load(sys.argv[3]), atol=1e-5)
before = {k for k in keras.saving.get_custom_objects() if k.startswith("kdl>")}
for m in sys.argv[4].split(","):
    importlib.import_module(m)
after = {k for k in keras.saving.get_custom_objects() if k.startswith("kdl>")}
print("REGISTERED", len(before), "MISSING", sorted(after - before))
print("PIPELINE", sorted(m for m in sys.modules if m.split(".")[0] == "pipelines"))
"""


def _library_modules() -> list[str]:
    skip = {"kdl.backend._jax", "kdl.backend._tensorflow", "kdl.backend._torch",
            "kdl.compress._tfmot_worker"}  # per-backend code; a TF_USE_LEGACY_KERAS script
    mods = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in (ROOT / "kdl").rglob("*.py"))
    return [m for m in mods if m not in skip]


@pytest.mark.once
def test_a_saved_kdl_model_loads_in_plain_keras_after_import_kdl(tmp_path):
    """And importing every kdl module (in the same fresh process) loads no pipeline module."""
    import numpy as np

    from kdl.layers import TransformerEncoderBlock
    from kdl.schedules import WarmupCosine

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 8)), TransformerEncoderBlock(num_heads=2, model_dim=8, mlp_dim=16),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.AdamW(WarmupCosine(1e-3, total_steps=10, warmup_steps=2)),
                  "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "model.keras"),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                           ",".join(_library_modules())],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MISSING []" in proc.stdout, proc.stdout
    assert "PIPELINE []" in proc.stdout, proc.stdout  # the library never imports the pipeline
    assert int(proc.stdout.split("REGISTERED")[1].split()[0]) >= 30  # layers, schedules, ...


@pytest.mark.once
def test_the_public_api_is_importable_from_kdl():
    import kdl

    for name in kdl.__all__:
        assert getattr(kdl, name) is not None, name
    assert "cnn" in kdl.MODELS and "warmup_cosine" in kdl.SCHEDULES
    assert kdl.build_model is kdl.models.build_model


@pytest.mark.once
def test_evaluate_split_and_the_deprecated_call_of_the_package_agree():
    """`kdl.evaluate` is the package; a split's metrics are `kdl.evaluate_split`. Calling the
    package (the README's old snippet) still gives the same figures, with a warning."""
    import types

    import numpy as np

    import kdl

    assert isinstance(kdl.evaluate, types.ModuleType) and kdl.evaluate.fgsm
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    rng = np.random.default_rng(0)
    split = types.SimpleNamespace(x=rng.normal(size=(8, 3)).astype("float32"),
                                  y=rng.integers(0, 2, 8))
    new = kdl.evaluate_split(model, split, "classification")
    assert kdl.evaluate_split is kdl.training.evaluate and "accuracy" in new
    with pytest.warns(DeprecationWarning, match="evaluate_split"):
        old = kdl.evaluate(model, split, "classification")
    assert old == new
