"""Engine "tfmot": tensorflow-model-optimization pruning and QAT in a separate process.

tfmot only works on tf_keras (Keras 2), and importing it switches `tf.keras`
for the whole process, so it never runs here: the model (a chain of standard
Keras layers) is described by its layer configs, rebuilt on tf_keras in a
`TF_USE_LEGACY_KERAS=1` subprocess (`_tfmot_worker.py`), and its weights are
moved in and out with `get_weights`/`set_weights`. Models with custom layers
or branches are refused, naming the layer, before any training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kdl.backend import keras_private
from kdl.compress.qat import functional_view
from kdl.compress.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

WORKER = Path(__file__).with_name("_tfmot_worker.py")
# Keras 3 config keys tf_keras does not know, or that the copied weights make moot.
_DROP_KEYS = {"kernel_initializer", "bias_initializer", "beta_initializer",
              "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
              "kernel_regularizer", "bias_regularizer", "activity_regularizer",
              "beta_regularizer", "gamma_regularizer", "kernel_constraint", "bias_constraint",
              "beta_constraint", "gamma_constraint", "quantization_config", "lora_rank",
              "lora_alpha", "synchronized", "seed"}


class TfmotEngineError(ValueError):
    """A model the tfmot engine cannot take, or a failed tfmot job."""


def _check_model(model: keras.Model) -> list[keras.layers.Layer]:
    try:
        model = functional_view(model)
    except ValueError as e:
        raise TfmotEngineError(f"the tfmot engine needs a Functional or Sequential model: {e}. "
                               "Use engine 'native' for a subclassed model.") from None
    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    for layer in layers:
        cls = type(layer)
        if not keras_private.is_keras_layer_class(cls):
            raise TfmotEngineError(
                f"the tfmot engine cannot take layer {layer.name!r} "
                f"({cls.__module__}.{cls.__name__}): tfmot works only on standard Keras "
                "layers. Use engine 'native', or rebuild the model from keras.layers.")
        nodes = keras_private.inbound_nodes(layer)
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            raise TfmotEngineError(
                f"the tfmot engine takes a plain chain of layers; layer {layer.name!r} has "
                "several inputs or is shared. Use engine 'native'.")
    for prev, layer in zip(layers, layers[1:], strict=False):
        src = keras_private.source_operation(
            keras_private.inbound_nodes(layer)[0].input_tensors[0])
        if src is not prev:
            raise TfmotEngineError(f"the tfmot engine takes a plain chain of layers; layer "
                                   f"{layer.name!r} does not follow {prev.name!r}. "
                                   "Use engine 'native'.")
    return layers


def _layer_spec(layer: keras.layers.Layer) -> dict[str, Any]:
    cfg = {k: v for k, v in layer.get_config().items() if k not in _DROP_KEYS}
    dtype = cfg.get("dtype")
    if isinstance(dtype, dict):
        cfg["dtype"] = dtype.get("config", {}).get("name", "float32")
    return {"class_name": type(layer).__name__, "config": cfg}


def model_spec(model: keras.Model) -> dict[str, Any]:
    """A tf_keras-readable description of a chain of standard layers (raises otherwise)."""
    layers = _check_model(model)
    return {"input_shape": list(model.inputs[0].shape[1:]),
            "layers": [_layer_spec(la) for la in layers]}


def _schedule_spec(schedule: PruningSchedule) -> dict[str, Any]:
    if isinstance(schedule, ConstantSparsity):
        return {"name": "constant", "kwargs": schedule.get_config()}
    if isinstance(schedule, PolynomialDecay):
        return {"name": "polynomial_decay", "kwargs": schedule.get_config()}
    raise TfmotEngineError(f"the tfmot engine takes ConstantSparsity or PolynomialDecay, "
                           f"not {type(schedule).__name__}")


def _run(job: dict[str, Any], arrays: dict[str, np.ndarray], job_dir: Path,
         timeout: float) -> dict[str, Any]:
    (job_dir / "job.json").write_text(json.dumps(job))
    np.savez(job_dir / "arrays.npz", **arrays)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(job_dir)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-15:]
        raise TfmotEngineError("the tfmot job failed:\n" + "\n".join(tail))
    return json.loads((job_dir / "result.json").read_text())


def _weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {f"w{i}": w for i, w in enumerate(model.get_weights())}


def tfmot_prune(model: keras.Model, schedule: PruningSchedule, x: np.ndarray, y: np.ndarray,
                *, epochs: int, batch_size: int = 32, learning_rate: float = 1e-3,
                loss: str = "sparse_categorical_crossentropy", seed: int = 0,
                timeout: float = 1800) -> keras.Model:
    """Prune with tfmot's `prune_low_magnitude`, train, `strip_pruning`; weights come back.

    Args:
        model: a chain of standard Keras layers (not modified).
        schedule: `ConstantSparsity` or `PolynomialDecay` (sent to tfmot as is).
        x, y: training data; `epochs`, `batch_size`, `learning_rate`, `loss`: the fit.

    Returns:
        A clone of `model` carrying the pruned weights.
    """
    spec = model_spec(model)
    job = {"task": "prune", "spec": spec, "schedule": _schedule_spec(schedule),
           "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
           "loss": loss, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="kdl_tfmot_") as tmp:
        _run(job, {**_weights(model), "x": x, "y": y}, Path(tmp), timeout)
        with np.load(Path(tmp) / "weights.npz") as f:
            weights = [f[f"w{i}"] for i in range(len(f.files))]
    out = keras.models.clone_model(model)
    out.set_weights(weights)
    return out


def tfmot_quantize(model: keras.Model, x: np.ndarray, y: np.ndarray, representative: np.ndarray,
                   out_path: Path | str, *, epochs: int, batch_size: int = 32,
                   learning_rate: float = 1e-4, loss: str = "sparse_categorical_crossentropy",
                   float_io: bool = False, preserve_sparsity: bool = False, seed: int = 0,
                   timeout: float = 1800) -> Path:
    """QAT with tfmot's `quantize_model`, then a full-int8 `.tflite` written to `out_path`.

    tfmot's QAT model (quantize wrappers, folded batch norm) has no Keras 3
    counterpart, so what comes back is the converted file, not weights.

    Args:
        preserve_sparsity: for a pruned model: tfmot's prune-preserving QAT
            (`quantize_apply` with `Default8BitPrunePreserveQuantizeScheme`),
            whose weight quantizers keep every zero of the input kernels; the
            worker also re-zeroes them after each step, because tfmot gives a
            Conv2D/Dense followed by a separate ReLU layer no weight quantizer
            at all. The `.tflite` keeps every zero of `model`. Plain
            `quantize_model` (the default) lets fine-tuning move them.
    """
    spec = model_spec(model)
    expected = tuple(model.inputs[0].shape[1:])
    if tuple(representative.shape[1:]) != expected:
        raise TfmotEngineError(f"representative dataset has examples of shape "
                               f"{tuple(representative.shape[1:])}, the model takes {expected}")
    job = {"task": "quantize", "spec": spec, "epochs": epochs, "batch_size": batch_size,
           "learning_rate": learning_rate, "loss": loss, "float_io": float_io,
           "preserve_sparsity": bool(preserve_sparsity), "seed": seed}
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="kdl_tfmot_") as tmp:
        result = _run(job, {**_weights(model), "x": x, "y": y,
                            "rep": np.asarray(representative, "float32")}, Path(tmp), timeout)
        tmp_out = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp_out.write_bytes(Path(result["tflite"]).read_bytes())
        os.replace(tmp_out, out_path)
    return out_path
