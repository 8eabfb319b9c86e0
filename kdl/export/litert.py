"""Run a `.tflite` file with the LiteRT interpreter, as a mobile app would."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ExportFileError(ValueError):
    """An exported file that is missing, truncated or not what it claims to be."""


def check_tflite_file(path: Path | str) -> Path:
    """Refuse a missing, empty or non-TFLite file with a message naming it."""
    path = Path(path)
    if not path.is_file():
        raise ExportFileError(f"{path}: no such .tflite file")
    with path.open("rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ExportFileError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier); "
                              "the file is corrupt or truncated: export it again")
    return path


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float -> integer as TFLite does: round half away from zero, then clamp."""
    info = np.iinfo(dtype)
    v = x / scale
    rounded = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point
    return np.clip(rounded, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype("float32") - zero_point) * scale).astype("float32")


class LiteRTRunner:
    """Float in, float out over a `.tflite` with one input and one output.

    Quantized integer input/output tensors (full-int8 models) are quantized and
    dequantized with the tensor's own scale and zero point, so callers always
    see the float values the Keras model would produce. An integer input
    without quantization (token ids) takes the values as they are.

    Args:
        path: the `.tflite` file.
        num_threads: interpreter threads (XNNPACK); None lets LiteRT decide.
    """

    def __init__(self, path: Path | str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = check_tflite_file(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ExportFileError(f"{self.path}: LiteRT cannot load it ({e})") from None
        inputs, outputs = (self.interpreter.get_input_details(),
                           self.interpreter.get_output_details())
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportFileError(f"{self.path}: expected one input and one output tensor, "
                                  f"found {len(inputs)} and {len(outputs)}")
        self.input, self.output = inputs[0], outputs[0]
        self._batch = int(self.input["shape"][0])
        # A file converted with a static batch (recurrent models) cannot be resized.
        self.fixed_batch = int(self.input.get("shape_signature", [-1])[0]) != -1

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            shape = [batch, *self.input["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = batch

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Feed an already-typed input tensor; return the raw output tensor."""
        self._resize(len(x))
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def _typed(self, x: np.ndarray) -> np.ndarray:
        """Float input -> the input tensor's dtype (quantized for quantized integer inputs;
        integer inputs with scale 0, token ids, take the values as they are)."""
        dtype = self.input["dtype"]
        scale, zp = self.input["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:
            x = quantize(x, scale, zp, dtype)
        return x.astype(dtype, copy=False)

    def kernel(self, x: np.ndarray):
        """Set `x` (float; quantized here once) as the input; return the bare `invoke`.

        Timing the returned function measures the model's kernels alone, without the
        app path's quantize/dequantize and copies (see `kdl.export.bench`).
        """
        typed = self._typed(np.asarray(x, dtype="float32"))
        self._resize(len(typed))
        self.interpreter.set_tensor(self.input["index"], typed)
        return self.interpreter.invoke

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype="float32")
        if self.fixed_batch and len(x) != self._batch:
            if len(x) % self._batch:
                raise ValueError(f"{self.path.name} takes batches of exactly {self._batch}; "
                                 f"got {len(x)} examples")
            return np.concatenate([self(x[i:i + self._batch])
                                   for i in range(0, len(x), self._batch)])
        y = self.run_raw(self._typed(x))
        if np.issubdtype(self.output["dtype"], np.integer):
            scale, zp = self.output["quantization"]
            return dequantize(y, scale, zp)
        return y.astype("float32", copy=False)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
