"""The table of export formats and the dispatch from format name to converter.

Each `Format` row says which file it writes, which options it takes, how its
file is run back, and the default verification thresholds. `export` writes the
requested formats; options that do not apply to a format are rejected by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdl.export.litert import ExportFileError, LiteRTRunner


class ExportError(RuntimeError):
    """A model that cannot be converted to a format, and why."""


@dataclass(frozen=True)
class Format:
    name: str
    filename: str
    runtime: str  # how the file is run back: keras | saved_model | litert
    description: str
    options: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)


FP32 = {"max_abs_diff": 1e-4, "min_top1_agreement": 1.0}
QUANTIZED = {"max_metric_drop": 0.01}

FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("keras", "model.keras", "keras", "Keras v3 archive, loads on every backend",
           thresholds=FP32),
    Format("saved_model", "saved_model", "saved_model",
           "TensorFlow SavedModel (serving endpoint 'serve')", thresholds=FP32),
    Format("tflite_fp32", "model_fp32.tflite", "litert", "TFLite, float32",
           ("allow_flex_ops",), FP32),
    Format("tflite_dynamic", "model_dynamic.tflite", "litert",
           "TFLite, int8 weights, float activations (dynamic range)",
           ("allow_flex_ops",), QUANTIZED),
    Format("tflite_fp16", "model_fp16.tflite", "litert", "TFLite, float16 weights",
           ("allow_flex_ops",), {"max_abs_diff": 1e-2, **QUANTIZED}),
    Format("tflite_int8", "model_int8.tflite", "litert",
           "TFLite, full integer: int8 weights, activations, input and output",
           ("allow_flex_ops", "representative", "float_io", "input_dtype"), QUANTIZED),
    Format("onnx", "model.onnx", "onnxruntime",
           "ONNX (tf2onnx from the TensorFlow backend), run back in onnxruntime",
           ("opset_version",), FP32),
]}


def _check_options(fmt: Format, options: dict[str, Any]) -> None:
    bad = [k for k, v in options.items() if v is not None and k not in fmt.options]
    if bad:
        allowed = ", ".join(fmt.options) or "none"
        raise ExportError(f"format {fmt.name!r} takes no option {', '.join(map(repr, bad))} "
                          f"(its options: {allowed})")


# ----------------------------------------------------------------------------- converters


def _float32_config(node: Any) -> Any:
    """A model config with every mixed-precision dtype policy replaced by float32."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and isinstance(node.get("config"), dict):
            name = node["config"].get("name", "")
            if name.startswith("mixed_"):
                return {**node, "config": {**node["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    return node


def float32_model(model):
    """The same model computing in float32 (a no-op for a float32 model).

    A model trained under a mixed policy keeps float32 variables but computes in
    bfloat16/float16, which TFLite builtins do not run. Export and its reference
    outputs use this float32 twin, with the very same weights.
    """
    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model
    twin = model.__class__.from_config(_float32_config(model.get_config()))
    twin.set_weights(model.get_weights())
    return twin


def _export_keras(model, path: Path, **_):
    model.save(path)


def _export_saved_model(model, path: Path, **_):
    model.export(str(path), format="tf_saved_model", verbose=False)


def _listed_ops(message: str, heading: str) -> list[str]:
    """Op names from the converter's "<heading>: A, B" summary lines."""
    lines = re.findall(rf"{heading}: ([^\n]+)", message)
    return sorted({op.strip() for line in lines for op in line.split(",") if op.strip()})


def _flex_ops(message: str) -> list[str]:
    listed = _listed_ops(message, "TF Select ops")
    if listed:
        return listed
    ops = set(re.findall(r'"tf\.(\w+)"', message)) | set(re.findall(r"Flex(\w+)", message))
    return sorted(ops)


def _static_batch_saved_model(model, directory: Path) -> Path:
    """The model exported with a batch-1 input signature (static shapes throughout)."""
    import tensorflow as tf

    spec = model.inputs[0]
    signature = [tf.TensorSpec((1, *spec.shape[1:]), spec.dtype)]
    model.export(str(directory), format="tf_saved_model", verbose=False,
                 input_signature=signature)
    return directory


def _convert_tflite(saved_model: Path, path: Path, *, allow_flex_ops: bool = False,
                    setup: Callable | None = None, model=None):
    """Convert; a recurrent model whose dynamic batch keeps TensorList ops is
    converted again from a batch-1 SavedModel, which lowers them to builtins
    (an app runs one example at a time anyway)."""
    try:
        _convert_once(saved_model, path, allow_flex_ops=allow_flex_ops, setup=setup)
    except ExportError as e:
        if model is None or "tensor list" not in str(e).lower() or len(model.inputs) != 1:
            raise
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            static = _static_batch_saved_model(model, Path(tmp) / "saved_model")
            _convert_once(static, path, allow_flex_ops=allow_flex_ops, setup=setup)


def _convert_once(saved_model: Path, path: Path, *, allow_flex_ops: bool = False,
                  setup: Callable | None = None):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_flex_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if setup is not None:
        setup(converter, tf)
    try:
        data = converter.convert()
    except Exception as e:  # the converter raises ConverterError and plain exceptions
        text = str(e)
        custom = _listed_ops(text, "Custom ops")
        if custom:
            raise ExportError(
                f"{path.name}: the model uses TensorFlow ops that TFLite has no kernel for, "
                f"not even with Flex ops ({', '.join(custom)}). Replace those layers."
            ) from None
        if not allow_flex_ops and ("Flex" in text or "select TF ops" in text.lower()
                                   or "not supported by the native" in text):
            ops = _flex_ops(text)
            raise ExportError(
                f"{path.name}: the model needs TensorFlow ops that TFLite builtins lack "
                f"({', '.join(ops) or 'see the converter log'}). Replace those layers, or "
                "set export.allow_flex_ops=true (the app then needs the Flex delegate)."
            ) from None
        if "tensor list" in text.lower():
            raise ExportError(f"{path.name}: TFLite conversion failed: tensor list ops could "
                              f"not be lowered: {text[-1500:]}") from None
        raise ExportError(f"{path.name}: TFLite conversion failed: {text[-2000:]}") from None
    path.write_bytes(data)


def _tflite_fp32(model, path, *, saved_model, allow_flex_ops=False, **_):
    _convert_tflite(saved_model, path, allow_flex_ops=allow_flex_ops, model=model)


def _tflite_dynamic(model, path, *, saved_model, allow_flex_ops=False, **_):
    def setup(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]

    _convert_tflite(saved_model, path, allow_flex_ops=allow_flex_ops, setup=setup,
                    model=model)


def _tflite_fp16(model, path, *, saved_model, allow_flex_ops=False, **_):
    def setup(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]

    _convert_tflite(saved_model, path, allow_flex_ops=allow_flex_ops, setup=setup,
                    model=model)


def check_representative(model, representative: np.ndarray | None) -> np.ndarray:
    """Calibration data must exist and match the model's input shape."""
    if representative is None or len(representative) == 0:
        raise ExportError("tflite_int8 needs a representative dataset (calibration inputs)")
    expected = tuple(model.inputs[0].shape[1:])
    got = tuple(representative.shape[1:])
    if got != expected:
        raise ExportError(f"representative dataset has examples of shape {got}, but the "
                          f"model's input is {expected}: draw it from the training split")
    dtype = "int32" if "int" in str(model.inputs[0].dtype) else "float32"  # token ids stay
    return np.asarray(representative, dtype)


def _tflite_int8(model, path, *, saved_model, representative=None, float_io=False,
                 allow_flex_ops=False, input_dtype="int8", **_):
    """`input_dtype="uint8"`: the model takes raw uint8 pixels (scale 1, zero point 0):
    calibration then includes an all-0 and an all-255 image, so the input's range is
    exactly [0, 255] whatever the calibration images held."""
    if input_dtype not in ("int8", "uint8"):
        raise ExportError(f"tflite_int8 input_dtype must be int8 or uint8, got {input_dtype!r}")
    data = check_representative(model, representative)
    if input_dtype == "uint8":
        if float_io:
            raise ExportError("tflite_int8: input_dtype=uint8 and float_io exclude each other")
        lo, hi = float(np.min(data)), float(np.max(data))
        if lo < 0 or hi > 255:
            raise ExportError(f"tflite_int8 input_dtype=uint8 takes raw pixels in [0, 255], "
                              f"but the calibration inputs span [{lo:g}, {hi:g}]: the model "
                              "must take unnormalized pixels (data.normalize=false)")
        data = np.concatenate([data, np.zeros_like(data[:1]), np.full_like(data[:1], 255.0)])

    def setup(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if allow_flex_ops:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        c.target_spec.supported_ops = ops
        if not float_io:
            c.inference_input_type = tf.uint8 if input_dtype == "uint8" else tf.int8
            c.inference_output_type = tf.int8

    _convert_tflite(saved_model, path, allow_flex_ops=allow_flex_ops, setup=setup,
                    model=model)


ONNX_PACKAGES = "pip install onnx==1.23.2 onnxruntime==1.31.1 tf2onnx==1.17.0"


def _export_onnx(model, path: Path, *, opset_version: int | None = None, **_):
    import importlib.util

    missing = [m for m in ("onnx", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"the onnx format needs {', '.join(missing)}: {ONNX_PACKAGES}")
    if not getattr(model, "_called", True):  # Keras refuses a model that has never run
        import keras

        model(keras.ops.zeros((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype))
    try:
        model.export(str(path), format="onnx", verbose=False, opset_version=opset_version)
    except Exception as e:  # tf2onnx raises plain exceptions for unsupported ops
        raise ExportError(f"{path.name}: ONNX conversion failed: {str(e)[-2000:]}") from None


EXPORTERS: dict[str, Callable] = {
    "keras": _export_keras,
    "saved_model": _export_saved_model,
    "tflite_fp32": _tflite_fp32,
    "tflite_dynamic": _tflite_dynamic,
    "tflite_fp16": _tflite_fp16,
    "tflite_int8": _tflite_int8,
    "onnx": _export_onnx,
}


def export(model, out_dir: Path | str, formats: list[str],
           options: dict[str, dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write `formats` of `model` into `out_dir`; return `{format: path}`.

    Args:
        model: a Keras model (TensorFlow backend).
        out_dir: an existing, empty-enough directory (callers make it atomic).
        formats: names in `FORMATS`.
        options: per-format options, e.g. `{"tflite_int8": {"representative": x}}`.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError("export needs the TensorFlow backend: run it in a process with "
                          "KERAS_BACKEND=tensorflow (pipelines do this for you)")
    out_dir = Path(out_dir)
    model = float32_model(model)
    options = options or {}
    unknown = [f for f in list(formats) + list(options) if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
    for name in formats:
        _check_options(FORMATS[name], options.get(name, {}))
    paths: dict[str, Path] = {}
    saved_model = out_dir / FORMATS["saved_model"].filename
    needs_sm = any(FORMATS[f].runtime == "litert" for f in formats) or "saved_model" in formats
    if needs_sm:
        _export_saved_model(model, saved_model)
        if "saved_model" in formats:
            paths["saved_model"] = saved_model
    for name in formats:
        if name == "saved_model":
            continue
        path = out_dir / FORMATS[name].filename
        EXPORTERS[name](model, path, saved_model=saved_model, **options.get(name, {}))
        paths[name] = path
    if needs_sm and "saved_model" not in formats:
        import shutil

        shutil.rmtree(saved_model)
    return paths


# ----------------------------------------------------------------------------- runners


def _run_keras(path: Path):
    import keras

    if not path.exists():
        raise ExportFileError(f"{path}: no such .keras file")
    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # zip errors, missing config, ...
        raise ExportFileError(f"{path}: cannot load this .keras file ({e})") from None
    model = float32_model(model)
    return lambda x: np.asarray(model.predict(x, batch_size=256, verbose=0), "float32")


def _run_saved_model(path: Path):
    import tensorflow as tf

    if not (path / "saved_model.pb").exists():
        raise ExportFileError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(str(path))  # keep a reference: its variables live on it

    def run(x):
        outs = [loaded.serve(tf.constant(x[i:i + 256])) for i in range(0, len(x), 256)]
        return np.concatenate([np.asarray(o, "float32") for o in outs])

    return run


def _run_onnx(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"running .onnx files needs onnxruntime: {ONNX_PACKAGES}") from e
    if not path.is_file():
        raise ExportFileError(f"{path}: no such .onnx file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf errors
        raise ExportFileError(f"{path}: onnxruntime cannot load it ({str(e).strip()[:300]}); "
                              "the file is corrupt or truncated: export it again") from None
    name = session.get_inputs()[0].name

    def run(x):
        outs = [session.run(None, {name: np.asarray(x[i:i + 256], "float32")})[0]
                for i in range(0, len(x), 256)]
        return np.concatenate([np.asarray(o, "float32") for o in outs])

    return run


def load_runner(fmt: str, path: Path | str) -> Callable[[np.ndarray], np.ndarray]:
    """A float-in, float-out callable over an exported file, by format."""
    runtime = FORMATS[fmt].runtime
    path = Path(path)
    if runtime == "litert":
        return LiteRTRunner(path).predict
    if runtime == "onnxruntime":
        return _run_onnx(path)
    if runtime == "saved_model":
        return _run_saved_model(path)
    return _run_keras(path)
