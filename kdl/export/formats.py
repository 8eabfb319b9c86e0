"""The table of export formats and the table of runtimes that run them back.

Each `Format` row says which file it writes, which options it takes, its exporter,
its runtime and the default verification thresholds; each `Runtime` row says how a
file is run back for verification (`load_runner`) and for the bench. `export`
writes the requested formats; options that do not apply to a format are rejected
by name. A new format is one row (and its exporter); a new runtime one row.
"""

from __future__ import annotations

import atexit
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdl.export import bench as bench_lib
from kdl.export.litert import ExportFileError, LiteRTRunner


class ExportError(RuntimeError):
    """A model that cannot be converted to a format, and why."""


@dataclass(frozen=True)
class Format:
    """One row of the format table: what a format writes, how, and how it is run back.

    Attributes:
        name: the format's name in configs and reports.
        filename: the file (or directory) it writes inside the export directory.
        runtime: the key in `RUNTIMES` that runs the file back (verification, bench).
        description: one line for `list` and the docs.
        options: the per-format options `export` accepts for it.
        thresholds: default verification thresholds (`kdl.export.compare`).
        family: the file type: keras | saved_model | tflite | onnx (default: name).
        exporter: `exporter(model, path, *, saved_model, **options)` writes the file.
    """

    name: str
    filename: str
    runtime: str
    description: str
    options: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    family: str = ""
    exporter: Callable[..., None] | None = None

    @property
    def is_tflite(self) -> bool:
        """A `.tflite` file (LiteRT): what the mobile bundle ships."""
        return (self.family or self.name) == "tflite"


@dataclass(frozen=True)
class Runtime:
    """How an exported file is run back.

    Attributes:
        name: the key in `RUNTIMES` (a `Format.runtime`).
        runner: `runner(path)` -> a float-in, float-out `predict(x)` (verification).
        bench: `bench(path, fmt, threads, extra)` -> the `kdl.export.bench.Runnable`
            the bench measures; None: the file is measured as the Keras baseline row
            (the model in memory on this process's backend).
        threaded: the bench measures it once per thread count (else once).
    """

    name: str
    runner: Callable[[Path], Callable[[np.ndarray], np.ndarray]]
    bench: Callable[..., bench_lib.Runnable] | None = None
    threaded: bool = False


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


def _unrolled_config(node: Any) -> Any:
    """A model config with `unroll=True` on every recurrent layer."""
    if isinstance(node, dict):
        out = {k: _unrolled_config(v) for k, v in node.items()}
        if out.get("unroll") is False:
            out["unroll"] = True
        return out
    if isinstance(node, list):
        return [_unrolled_config(v) for v in node]
    return node


def recurrent_layers(model) -> list[str]:
    """Names of the recurrent layers (SimpleRNN, LSTM, GRU, any `keras.layers.RNN`) in `model`."""
    import keras

    from kdl.backend import keras_private

    return [la.name for la in keras_private.flatten_layers(model, include_self=False)
            if isinstance(la, keras.layers.RNN)]


def unrolled_model(model):
    """The same model with every recurrent layer unrolled over its fixed sequence length.

    Full-int8 conversion of a recurrent layer kept as a `While` loop crashes
    the TFLite calibrator (SIGSEGV in `_feed_tensors`, TF 2.21, SimpleRNN, LSTM
    and GRU alike); unrolled, the loop becomes plain builtin ops that calibrate
    and quantize like any other layer. The weights are the very same.

    Raises:
        ExportError: a sequence length that is not fixed (nothing to unroll over).
    """
    names = recurrent_layers(model)
    if not names:
        return model
    free = [t.name for t in model.inputs if any(d is None for d in t.shape[1:])]
    if free:
        raise ExportError(
            f"tflite_int8 of a recurrent model ({', '.join(names)}) needs a fixed sequence "
            f"length, and input(s) {', '.join(free)} have a free one: the int8 calibrator "
            "crashes on the recurrent loop, and kdl unrolls it over the fixed length "
            "instead. Build the model with a fixed input length, or export tflite_dynamic "
            "(int8 weights, float activations), which converts the loop as it is.")
    twin = model.__class__.from_config(_unrolled_config(model.get_config()))
    twin.set_weights(model.get_weights())
    return twin


def _export_keras(model, path: Path, **_):
    model.save(path)


def _trace_saved_model(model, path: Path, **kwargs) -> None:
    """`model.export` as a SavedModel, Keras's masked attention (MultiHeadAttention,
    masked Softmax: KerasHub's BERT family) filling masked logits like kdl's own
    attention (`mask_logits`: the row's smallest logit - 30) instead of -1e9/-2.4e38,
    which give full-int8 TFLite's select a scale that rounds every real logit to the
    same value. In float the weights agree to exp(-30); Keras is restored afterwards."""
    from kdl.backend import keras_private
    from kdl.layers.attention import mask_logits

    with keras_private.bounded_attention_mask_fill(mask_logits):
        model.export(str(path), format="tf_saved_model", verbose=False, **kwargs)


def _export_saved_model(model, path: Path, **_):
    _trace_saved_model(model, path)


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
    _trace_saved_model(model, directory, input_signature=signature)
    return directory


def _convert_tflite(saved_model: Path, path: Path, fmt: str, job: dict[str, Any], model=None):
    """Convert; a recurrent model whose dynamic batch keeps TensorList ops is
    converted again from a batch-1 SavedModel, which lowers them to builtins
    (an app runs one example at a time anyway)."""
    try:
        _convert_once(saved_model, path, fmt, job)
    except ConverterCrash:
        raise
    except ExportError as e:
        if model is None or "tensor list" not in str(e).lower() or len(model.inputs) != 1:
            raise
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            static = _static_batch_saved_model(model, Path(tmp) / "saved_model")
            _convert_once(static, path, fmt, job)


WORKER = Path(__file__).with_name("_tflite_worker.py")
CONVERT_TIMEOUT_S = 1800


class ConverterCrash(ExportError):
    """The TFLite converter (or its int8 calibrator) killed its process.

    Attributes:
        details: `format`, `file`, `returncode`, `signal` (name, or None) and
            `last_words` (the tail of the converter process's stderr).
    """

    def __init__(self, message: str, details: dict[str, Any]):
        super().__init__(message)
        self.details = details


def last_words(stderr: str, lines: int = 6) -> str:
    """What a crashed process said last, on one line: around Python's "Fatal Python error"
    (the line before it and the innermost frames), else the last lines of stderr."""
    said = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    fatal = next((i for i, line in enumerate(said) if line.startswith("Fatal Python error")),
                 None)
    tail = said[max(0, fatal - 1):fatal + lines - 1] if fatal is not None else said[-lines:]
    return " | ".join(tail)[-1500:] or "(nothing on stderr)"


def _signal_name(returncode: int) -> str | None:
    """SIGSEGV for -11 (killed by the signal) or 139 (a shell's 128 + 11)."""
    import signal

    for number in (-returncode, returncode - 128):
        try:
            return signal.Signals(number).name
        except ValueError:
            pass
    return None


class _ConverterProcess:
    """The converter's child process (`_tflite_worker.py`): started on first use, reused
    for every later conversion (TensorFlow starts once), started afresh after a crash."""

    def __init__(self):
        self.proc = None
        self.stderr = None
        self.lock = threading.Lock()

    def _start(self) -> None:
        import os
        import subprocess
        import sys
        import tempfile

        self.stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1")}
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=env)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a converter stuck at exit: end it
                self.proc.kill()
            self.proc = None

    def _said_since(self, offset: int) -> str:
        self.stderr.flush()
        self.stderr.seek(offset)
        return self.stderr.read()

    def run(self, spec: dict[str, Any], fmt: str, path: Path) -> None:
        """Converts one job; `ExportError` with the converter's message if it refused,
        `ConverterCrash` if the process died (or overran `CONVERT_TIMEOUT_S`)."""
        import json
        import os
        import select

        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            offset = os.fstat(self.stderr.fileno()).st_size
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], CONVERT_TIMEOUT_S)
            line = self.proc.stdout.readline() if ready else None
            if line:
                answer = json.loads(line)
                if "error" in answer:
                    raise ExportError(answer["error"])
                return
            if line is None:  # overran: end it
                self.proc.kill()
            rc = self.proc.wait()
            self.proc = None
            words = last_words(self._said_since(offset))
            if line is None:
                raise ConverterCrash(
                    f"{fmt}: the TFLite converter did not finish in {CONVERT_TIMEOUT_S} s "
                    f"(killed); its last words: {words}",
                    {"format": fmt, "file": path.name, "returncode": rc, "signal": "timeout",
                     "last_words": words})
            sig = _signal_name(rc)
            what = "converting and calibrating" if spec.get("representative") else "converting"
            raise ConverterCrash(
                f"{fmt}: the TFLite converter crashed while {what} "
                f"({sig or 'exit ' + str(rc)}); its last words: {words}",
                {"format": fmt, "file": path.name, "returncode": rc, "signal": sig,
                 "last_words": words})


_CONVERTER = _ConverterProcess()
atexit.register(_CONVERTER.close)


def _run_converter(saved_model: Path, path: Path, fmt: str, job: dict[str, Any]) -> None:
    """Runs the converter in its child process; the calibration data goes through a
    temporary `.npy` beside the output, removed whatever happens."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".tflite-convert-", dir=path.parent) as tmp:
        spec = {**job, "saved_model": str(saved_model), "out": str(path)}
        if job.get("representative") is not None:
            np.save(Path(tmp) / "representative.npy", job["representative"])
            spec["representative"] = str(Path(tmp) / "representative.npy")
        _CONVERTER.run(spec, fmt, path)


def _convert_once(saved_model: Path, path: Path, fmt: str, job: dict[str, Any]) -> None:
    allow_flex_ops = bool(job.get("allow_flex_ops"))
    try:
        _run_converter(saved_model, path, fmt, job)
    except ConverterCrash:
        raise
    except ExportError as e:
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


def _tflite_fp32(model, path, *, saved_model, allow_flex_ops=False, **_):
    _convert_tflite(saved_model, path, "tflite_fp32", {"allow_flex_ops": allow_flex_ops},
                    model=model)


def _tflite_dynamic(model, path, *, saved_model, allow_flex_ops=False, **_):
    _convert_tflite(saved_model, path, "tflite_dynamic",
                    {"allow_flex_ops": allow_flex_ops, "optimize": True}, model=model)


def _tflite_fp16(model, path, *, saved_model, allow_flex_ops=False, **_):
    _convert_tflite(saved_model, path, "tflite_fp16",
                    {"allow_flex_ops": allow_flex_ops, "float16": True}, model=model)


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
    exactly [0, 255] whatever the calibration images held. A recurrent model is
    converted unrolled (see `unrolled_model`: the calibrator crashes on its loop)."""
    if input_dtype not in ("int8", "uint8"):
        raise ExportError(f"tflite_int8 input_dtype must be int8 or uint8, got {input_dtype!r}")
    unrolled = unrolled_model(model)
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
    job = {"allow_flex_ops": allow_flex_ops, "representative": data, "float_io": bool(float_io),
           "input_dtype": input_dtype}
    if unrolled is model:
        _convert_tflite(saved_model, path, "tflite_int8", job, model=model)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".unrolled-", dir=path.parent) as tmp:
        unrolled_sm = _static_batch_saved_model(unrolled, Path(tmp) / "saved_model")
        _convert_tflite(unrolled_sm, path, "tflite_int8", job, model=unrolled)


ONNX_PACKAGES = "pip install onnx==1.23.2 onnxruntime==1.31.1 tf2onnx==1.17.0"


def _export_onnx(model, path: Path, *, opset_version: int | None = None, **_):
    import importlib.util

    missing = [m for m in ("onnx", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"the onnx format needs {', '.join(missing)}: {ONNX_PACKAGES}")
    from kdl.backend import keras_private

    if not keras_private.has_been_called(model):  # Keras refuses a model that never ran
        import keras

        model(keras.ops.zeros((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype))
    try:
        model.export(str(path), format="onnx", verbose=False, opset_version=opset_version)
    except Exception as e:  # tf2onnx raises plain exceptions for unsupported ops
        raise ExportError(f"{path.name}: ONNX conversion failed: {str(e)[-2000:]}") from None


FP32 = {"max_abs_diff": 1e-4, "min_top1_agreement": 1.0}
QUANTIZED = {"max_metric_drop": 0.01}

FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("keras", "model.keras", "keras", "Keras v3 archive, loads on every backend",
           thresholds=FP32, exporter=_export_keras),
    Format("saved_model", "saved_model", "saved_model",
           "TensorFlow SavedModel (serving endpoint 'serve')", thresholds=FP32,
           exporter=_export_saved_model),
    Format("tflite_fp32", "model_fp32.tflite", "litert", "TFLite, float32",
           ("allow_flex_ops",), FP32, "tflite", _tflite_fp32),
    Format("tflite_dynamic", "model_dynamic.tflite", "litert",
           "TFLite, int8 weights, float activations (dynamic range)",
           ("allow_flex_ops",), QUANTIZED, "tflite", _tflite_dynamic),
    Format("tflite_fp16", "model_fp16.tflite", "litert", "TFLite, float16 weights",
           ("allow_flex_ops",), {"max_abs_diff": 1e-2, **QUANTIZED}, "tflite", _tflite_fp16),
    Format("tflite_int8", "model_int8.tflite", "litert",
           "TFLite, full integer: int8 weights, activations, input and output",
           ("allow_flex_ops", "representative", "float_io", "input_dtype"), QUANTIZED,
           "tflite", _tflite_int8),
    Format("onnx", "model.onnx", "onnxruntime",
           "ONNX (tf2onnx from the TensorFlow backend), run back in onnxruntime",
           ("opset_version",), FP32, exporter=_export_onnx),
]}


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
    needs_sm = any(FORMATS[f].is_tflite for f in formats) or "saved_model" in formats
    try:
        if needs_sm:
            _export_saved_model(model, saved_model)
            if "saved_model" in formats:
                paths["saved_model"] = saved_model
        for name in formats:
            if name == "saved_model":
                continue
            path = out_dir / FORMATS[name].filename
            FORMATS[name].exporter(model, path, saved_model=saved_model, **options.get(name, {}))
            paths[name] = path
    finally:  # the shared SavedModel is a by-product unless asked for, also on failure
        if needs_sm and "saved_model" not in formats:
            import shutil

            shutil.rmtree(saved_model, ignore_errors=True)
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


def _run_litert(path: Path):
    return LiteRTRunner(path).predict


RUNTIMES: dict[str, Runtime] = {r.name: r for r in [
    Runtime("keras", _run_keras),
    Runtime("saved_model", _run_saved_model,
            lambda path, fmt, threads, extra: bench_lib.saved_model_runnable(path, extra=extra)),
    Runtime("litert", _run_litert, lambda path, fmt, threads, extra: bench_lib.litert_runnable(
        path, fmt, threads=threads, extra=extra), threaded=True),
    Runtime("onnxruntime", _run_onnx, lambda path, fmt, threads, extra: bench_lib.onnx_runnable(
        path, threads=threads, extra=extra), threaded=True),
]}


def load_runner(fmt: str, path: Path | str) -> Callable[[np.ndarray], np.ndarray]:
    """A float-in, float-out callable over an exported file, by format."""
    return RUNTIMES[FORMATS[fmt].runtime].runner(Path(path))
