"""The shared model harness: every registered model goes through it.

`cases()` lists one `Case` per registered model (its first task; other tasks
are checked for shape only). Each check takes a `Case` and raises
`AssertionError` with a message naming the model:

- `check_forward`: the `tiny` preset builds; outputs have the expected shape
  and are finite.
- `check_train_step`: one `fit` step changes every trainable weight (or the
  ones the entry's harness names) and leaves them finite.
- `check_config_roundtrip`: `from_config(get_config())` rebuilds a model that,
  with the same weights, gives the same outputs.
- `check_save_load`: a `.keras` file reloads with identical outputs.
- `check_mixed_precision`: the model builds and runs under `mixed_float16`
  (`mixed_bfloat16` on torch CPU) with finite float outputs.
- `write_cross_backend` / `check_cross_backend`: `.keras` files written by
  this process load in another backend's process with the same outputs.

How to feed a model comes from its registry entry's `harness` metadata:

- supervised models (`build(input_shape, num_outputs, *, task, ...)`):
  `{"input_shape": (8, 8, 1), "num_outputs": 3, "vocab": None,
  "output_shape": None}` (defaults shown; `vocab` makes integer token input,
  `output_shape` overrides `(num_outputs,)`, `inputs` is a function
  `(rng, batch) -> x` for structured input, `targets` a function
  `(rng, batch, task) -> y` for unusual targets).
- custom-training models (`CustomTrainModel` subclasses):
  `{"kwargs": {...}, "example": fn(rng, batch) -> (call_input, fit_x)}`;
  the model is compiled with Adam and fitted on `fit_x` alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kdl.registry import MODELS

SUPERVISED = ("classification", "regression")
BATCH = 2


@dataclass
class Case:
    """One registered model, built from its `tiny` preset, and data to feed it."""

    name: str
    task: str
    build_args: tuple
    build_kwargs: dict[str, Any]
    x: Any
    y: Any = None
    output_shape: tuple | None = None
    harness: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.task}"

    @property
    def supervised(self) -> bool:
        return self.task in SUPERVISED

    def build(self, seed: int = 0) -> keras.Model:
        """The tiny model, its weights drawn from `seed` (a case is the same model
        whatever ran before it)."""
        keras.utils.set_random_seed(seed)
        return MODELS.build(self.name, *self.build_args, preset="tiny", **self.build_kwargs)

    def compile(self, model: keras.Model, learning_rate: float = 1e-2) -> None:
        # One step: eager is cheapest on TensorFlow/PyTorch (no tracing); on JAX eager
        # compiles op by op, so one jit of the whole step is faster.
        eager = keras.backend.backend() != "jax"
        opt = keras.optimizers.Adam(learning_rate)
        if self.supervised:
            loss = ("sparse_categorical_crossentropy" if self.task == "classification"
                    else "mse")
            model.compile(optimizer=opt, loss=loss, run_eagerly=eager)
        else:
            model.compile(optimizer=opt, run_eagerly=eager)


def _inputs(rng, batch, shape, vocab=None):
    if vocab:
        return rng.integers(1, vocab, size=(batch, *shape)).astype("int32")
    return rng.normal(size=(batch, *shape)).astype("float32")


def make_case(name: str, task: str | None = None, batch: int = BATCH, seed: int = 0) -> Case:
    """The harness case of model `name` for `task` (its first task by default)."""
    entry = MODELS.get(name)
    tasks = entry.spec.tasks or ("classification",)
    task = task or tasks[0]
    h = dict(entry.spec.harness)
    rng = np.random.default_rng(seed)
    if task in SUPERVISED:
        input_shape = h.get("input_shape", (8, 8, 1))
        num_outputs = int(h.get("num_outputs", 3)) if task == "classification" else 2
        if "inputs" in h:  # inputs with structure (a graph's adjacency, ...)
            input_shape = tuple(input_shape)
            x = h["inputs"](rng, batch)
        elif isinstance(input_shape, list):  # several inputs
            input_shape = tuple(tuple(s) for s in input_shape)
            x = [_inputs(rng, batch, s, h.get("vocab")) for s in input_shape]
        else:
            input_shape = tuple(input_shape)
            x = _inputs(rng, batch, input_shape, h.get("vocab"))
        out = tuple(h["output_shape"]) if h.get("output_shape") else (num_outputs,)
        if task == "regression" and h.get("output_shape"):
            out = (*out[:-1], num_outputs)
        if "targets" in h:
            y = h["targets"](rng, batch, task)
        elif task == "classification":
            y = rng.integers(0, num_outputs, size=(batch, *out[:-1])).astype("int32")
        else:
            y = rng.normal(size=(batch, *out)).astype("float32")
        return Case(name, task, (input_shape, num_outputs), {"task": task, **h.get("kwargs", {})},
                    x, y, out, h)
    if "example" not in h:
        raise ValueError(f"model {name!r} ({task}) needs harness metadata with an 'example' "
                         "function (rng, batch) -> (call_input, fit_x)")
    call_input, fit_x = h["example"](rng, batch)
    return Case(name, task, (), dict(h.get("kwargs", {})), call_input, fit_x,
                h.get("output_shape"), h)


def cases(registry=MODELS) -> list[Case]:
    """One case per registered model (first task)."""
    return [make_case(e.name) for e in registry]


def task_cases(registry=MODELS) -> list[tuple[str, str]]:
    """`(name, task)` for each further supervised task of each model."""
    out = []
    for e in registry:
        tasks = e.spec.tasks
        out += [(e.name, t) for t in tasks[1:] if t in SUPERVISED]
    return out


def _flat(outputs) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def predict(model: keras.Model, x) -> list[np.ndarray]:
    """Inference outputs (training=False) as a flat list of NumPy arrays.

    On JAX `predict` (one jit of the forward) is much faster than an eager call,
    which compiles op by op; elsewhere the eager call is cheaper.
    """
    if keras.backend.backend() == "jax":
        n = len(keras.tree.flatten(x)[0])
        return _flat(model.predict(x, batch_size=n, verbose=0))
    return _flat(model(x, training=False))


def check_forward(case: Case, model: keras.Model | None = None) -> list[np.ndarray]:
    model = model or case.build()
    outs = predict(model, case.x)
    if case.output_shape is not None:
        expected = (len(keras.tree.flatten(case.x)[0]), *case.output_shape)
        assert outs[0].shape == expected, (
            f"{case.id}: output shape {outs[0].shape}, expected {expected}")
    for o in outs:
        assert np.all(np.isfinite(o)), f"{case.id}: non-finite outputs"
    return outs


def check_train_step(case: Case, model: keras.Model | None = None, steps: int = 1) -> None:
    model = model or case.build()
    case.compile(model)
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights]
    assert before, f"{case.id}: no trainable weights"
    n = len(keras.tree.flatten(case.x if case.supervised else case.y)[0])
    if case.supervised:
        model.fit(case.x, case.y, batch_size=n, epochs=steps, verbose=0)
    else:
        model.fit(case.y, batch_size=n, epochs=steps, verbose=0)
    after = [np.array(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights]
    frozen = set(case.harness.get("unchanged_ok", ()))
    for w, a, b in zip(model.trainable_weights, before, after, strict=True):
        assert np.all(np.isfinite(b)), f"{case.id}: {w.path} is not finite after a step"
        if not any(f in w.path for f in frozen):
            assert not np.array_equal(a, b), f"{case.id}: {w.path} did not change in a step"


def check_config_roundtrip(case: Case, model: keras.Model | None = None) -> None:
    model = model or case.build()
    ref = predict(model, case.x)
    config = model.get_config()
    json.dumps(config, default=str)
    clone = type(model).from_config(config)
    predict(clone, case.x)  # builds subclassed models
    clone.set_weights(model.get_weights())
    for a, b in zip(ref, predict(clone, case.x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{case.id}: config round-trip changed outputs")


def check_save_load(case: Case, model: keras.Model | None = None) -> None:
    model = model or case.build()
    ref = predict(model, case.x)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{case.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    for a, b in zip(ref, predict(loaded, case.x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6,
                                   err_msg=f"{case.id}: .keras reload changed outputs")


def mixed_policy() -> str:
    return "mixed_bfloat16" if keras.backend.backend() == "torch" else "mixed_float16"


def check_mixed_precision(case: Case) -> None:
    previous = keras.config.dtype_policy()
    # a model may name another policy per backend (KerasHub's einsums: no float16 dot on
    # XLA's CPU backend)
    policy = case.harness.get("mixed_policy", {}).get(keras.backend.backend(), mixed_policy())
    keras.config.set_dtype_policy(policy)
    try:
        model = case.build()
        outs = predict(model, case.x)
    finally:
        keras.config.set_dtype_policy(previous)
    for o in outs:
        assert np.all(np.isfinite(o.astype("float32"))), f"{case.id}: non-finite under mixed"
    if case.supervised:
        assert outs[0].dtype == np.float32, f"{case.id}: head is {outs[0].dtype}, not float32"


# -- cross-backend ----------------------------------------------------------------
def write_cross_backend(directory: str | Path, all_cases: list[Case], build=None) -> list[str]:
    """Save each case's model and its reference outputs under `directory`.

    `build(case)` gives the model (default: `case.build()`), e.g. a cached one.
    """
    directory = Path(directory)
    names = []
    for case in all_cases:
        model = build(case) if build else case.build()
        outs = predict(model, case.x)
        model.save(directory / f"{case.name}.keras")
        xs = keras.tree.flatten(case.x)
        np.savez(directory / f"{case.name}.npz", n_inputs=len(xs), list_input=isinstance(
            case.x, list | tuple), **{f"x{i}": x for i, x in enumerate(xs)},
            **{f"y{i}": y for i, y in enumerate(outs)})
        names.append(case.name)
    return names


def check_cross_backend(directory: str | Path, backend: str, timeout: int = 600) -> dict:
    """Load the files of `write_cross_backend` in a `backend` process; raise on mismatch."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    proc = subprocess.run([sys.executable, "-m", "kdl.testing.crossload", str(directory)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"loading on {backend} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in report.items() if v != "ok"}
    assert not bad, f"models that do not reload on {backend}: {bad}"
    return report


def other_backend(backend: str | None = None) -> str:
    """The next backend in the cycle tensorflow -> jax -> torch -> tensorflow."""
    order = ["tensorflow", "jax", "torch"]
    return order[(order.index(backend or keras.backend.backend()) + 1) % 3]
