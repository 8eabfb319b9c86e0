"""Replay a mobile bundle's golden vectors exactly as an app would.

Usage:
    python -m pipelines verify-bundle <bundle_dir> [--threads N] [--quiet]
    python pipelines/verify_bundle.py <bundle_dir>      # the file alone also works

The checker reads `contract.json` and `golden.json` from the bundle and, for
each `.tflite` file the contract lists:

1. refuses a file that is missing, is not a TFLite flatbuffer (identifier
   `TFL3` at byte 4), does not load or allocate in the LiteRT interpreter, or
   whose tensors (shape, dtype, quantization) differ from the contract;
2. for every golden example: applies the contract's normalization
   `(x - mean) / std` to the raw input, quantizes it when the input tensor is
   integer (`q = clamp(round_half_away_from_zero(x / scale) + zero_point)`),
   runs the interpreter at batch 1, dequantizes integer outputs
   (`(q - zero_point) * scale`) and compares them with the expected outputs
   within the file's tolerance (`|got - expected| <= atol + rtol * |expected|`),
   plus the top-1 class for classification bundles when it is unambiguous.

Text bundles (a `preprocessing.tokenizer` block): first each golden string
(`golden.text`) goes through the plain-Python reference tokenizer
(`tokenizer_reference.py`, written from the contract alone) and must give the
golden token ids exactly; the ids then go through the model as above.

It imports only the standard library, numpy and `ai-edge-litert`, never Keras,
TensorFlow or kdl: it is the reference an Android or iOS unit test mirrors,
and a copy of this file (with `tokenizer_reference.py` beside it, for text)
runs anywhere those two packages install.

Before any model file is read, the contract is validated completely (every
block by its entry in `CONTRACT_BLOCKS`: file names inside the bundle, sha256
present and matching, numbers finite and in range, tolerances bounded), and a
NaN or infinity never passes a comparison.

Exit status: 0 every file passes; 1 a golden vector does not reproduce (the
report says which file, example and output, by how much); 2 the bundle is
malformed (missing or unreadable file, bad JSON, a contract that breaks the
schema or does not match the model file), in one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CONTRACT = "contract.json"
GOLDEN = "golden.json"
CONTRACT_SCHEMA = "kdl.bundle/1"
GOLDEN_SCHEMA = "kdl.golden/1"
TFLITE_IDENTIFIER = b"TFL3"

EXIT_OK, EXIT_MISMATCH, EXIT_MALFORMED = 0, 1, 2


class MalformedBundleError(Exception):
    """The bundle cannot be checked: a file is missing, unreadable or inconsistent."""


# ---------------------------------------------------------------------------
# The contract's schema, checked completely before any model file is read.
#
# Each block of `contract.json` is one entry of `CONTRACT_BLOCKS` (and each
# preprocessing step one entry of `PREPROCESSING`): a function
# `check(value, where, v)` that raises `MalformedBundleError` naming the key,
# given the block's value, its place in the file and the `_Validation` `v`
# (bundle directory, declared files, the other blocks). A new block (image
# preprocessing, a tokenizer, calibration) is one function and one entry.

MAX_RTOL = 0.5  # a tolerance above this accepts nearly anything: refused
ATOL_FLOOR = 1e-3  # atol may reach max(ATOL_FLOOR, MAX_ATOL_SHARE * max|expected|)
MAX_ATOL_SHARE = 0.5
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")
_SHA256_CHARS = frozenset("0123456789abcdef")


def _malformed(where: str, problem: str) -> MalformedBundleError:
    return MalformedBundleError(f"{where}: {problem}")


def _kind(value, kind: type | tuple[type, ...], where: str):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    name = " or ".join(k.__name__ for k in kinds)
    if isinstance(value, bool) and bool not in kinds:
        raise _malformed(where, f"must be {name}, got a boolean")
    if not isinstance(value, kind):
        raise _malformed(where, f"must be {name}, got {type(value).__name__}")
    return value


def _require(d: dict, key: str, where: str, kind: type | tuple[type, ...]):
    if not isinstance(d, dict):
        raise _malformed(where, f"expected an object, got {type(d).__name__}")
    if key not in d:
        raise _malformed(where, f"missing key {key!r}")
    return _kind(d[key], kind, f"{where}.{key}")


def _keys(d: dict, where: str, allowed: tuple[str, ...]) -> None:
    _kind(d, dict, where)
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise _malformed(where, f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: "
                                f"{', '.join(allowed)})")


def _number(value, where: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, integer: bool = False) -> float:
    """A finite JSON number (not a boolean, not a string) inside [lo, hi] (lo open if asked)."""
    _kind(value, int if integer else (int, float), where)
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise _malformed(where, f"must be a finite number, got {value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise _malformed(where, f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and v > hi:
        raise _malformed(where, f"must be <= {hi:g}, got {value!r}")
    return v


def _numbers(value, where: str, **bounds) -> list[float]:
    _kind(value, list, where)
    if not value:
        raise _malformed(where, "is empty")
    return [_number(x, f"{where}[{i}]", **bounds) for i, x in enumerate(value)]


class _Validation:
    """What block checks share: the bundle directory, the declared files, the contract."""

    def __init__(self, bundle_dir: Path, contract: dict):
        self.bundle_dir = bundle_dir
        self.contract = contract
        self.files: dict[str, str] = {}  # every file the contract declares -> its sha256

    def name(self, value, where: str) -> str:
        """A file name that stays inside the bundle: relative, no `..`, no link out."""
        _kind(value, str, where)
        p = Path(value)
        if (not value or "\\" in value or "\x00" in value or p.is_absolute()
                or any(part in ("..", "") for part in value.split("/"))):
            raise _malformed(where, f"file name {value!r} leaves the bundle or is not a plain "
                                    "relative path; name a file inside the bundle directory")
        root = self.bundle_dir.resolve()
        target = (self.bundle_dir / p).resolve()
        if not target.is_relative_to(root):
            raise _malformed(where, f"{value!r} is a link that leaves the bundle (to {target}); "
                                    "copy the file into the bundle instead")
        return value

    def declare(self, name, sha256, where: str) -> None:
        """A file the app needs: its name must stay inside, its sha256 is mandatory."""
        self.name(name, where)
        _kind(sha256, str, f"{where} sha256")
        if len(sha256) != 64 or not set(sha256) <= _SHA256_CHARS:
            raise _malformed(f"{where} sha256", f"must be 64 lowercase hex digits, got "
                                                f"{sha256!r}")
        self.files[name] = sha256

    def check_files(self) -> None:
        """Every declared file exists and has its sha256 (reads each once)."""
        for name, sha in self.files.items():
            path = self.bundle_dir / name
            if not path.is_file():
                raise _malformed(str(path), "file declared in the contract is missing; "
                                            "re-export the bundle")
            if _sha256(path.read_bytes()) != sha:
                raise _malformed(str(path), "sha256 differs from the contract's; the file "
                                            "changed after the bundle was written. Re-export "
                                            "the bundle.")


def _check_schema(value, where: str, v: _Validation) -> None:
    if value != CONTRACT_SCHEMA:
        raise _malformed(where, f"is {value!r}, this checker reads {CONTRACT_SCHEMA!r}")


def _check_model(value, where: str, v: _Validation) -> None:
    task = _require(value, "task", where, str)
    if task not in ("classification", "regression"):
        raise _malformed(f"{where}.task", f"must be classification or regression, got {task!r}")


def _check_labels(value, where: str, v: _Validation) -> None:
    _kind(value, list, where)
    for i, label in enumerate(value):
        _kind(label, str, f"{where}[{i}]")
    if len(set(value)) != len(value):
        raise _malformed(where, "label names repeat")


def _check_normalization(value, where: str, v: _Validation) -> None:
    if value is None:
        return
    _keys(value, where, ("mean", "std", "formula", "applies_to"))
    mean = _numbers(_require(value, "mean", where, list), f"{where}.mean")
    std = _numbers(_require(value, "std", where, list), f"{where}.std", lo=0.0, lo_open=True)
    if len(mean) != len(std):
        raise _malformed(where, f"mean has {len(mean)} values, std {len(std)}")


IMAGE_KEYS = ("kind", "image_size", "layout", "color", "channel_order", "decode", "resize",
              "half_pixel_centers", "antialias", "fit", "rounding", "value_range",
              "model_input")


def _check_image(value, where: str, v: _Validation) -> None:
    if value is None:
        return
    _keys(value, where, IMAGE_KEYS)
    choices = {"kind": ("image",), "layout": ("NHWC",), "color": ("rgb", "grayscale"),
               "resize": ("bilinear", "nearest"), "fit": ("stretch", "crop", "pad"),
               "half_pixel_centers": (True,), "antialias": (False,)}
    for key, allowed in choices.items():
        if _require(value, key, where, (str, bool)) not in allowed:
            raise _malformed(f"{where}.{key}", f"{value[key]!r} is not one of {list(allowed)}")
    size = _require(value, "image_size", where, list)
    if len(size) != 2:
        raise _malformed(f"{where}.image_size", f"must be [height, width], got {size}")
    for i, d in enumerate(size):
        _number(d, f"{where}.image_size[{i}]", lo=1, integer=True)
    lo, hi = _numbers(_require(value, "value_range", where, list), f"{where}.value_range")
    if [lo, hi] != [0, 255]:
        raise _malformed(f"{where}.value_range", f"decoded 8-bit pixels are [0, 255], got "
                                                 f"{[lo, hi]}")
    channels = 3 if value["color"] == "rgb" else 1
    for fname, entry in (v.contract.get("files") or {}).items():
        shape = ((entry.get("inputs") or [{}])[0]).get("shape") or []
        if len(shape) == 4 and shape[1:] != [*size, channels]:
            raise _malformed(f"{where}", f"says {size} x {channels} channels, {fname} takes "
                                         f"{shape[1:]}")


TOKENIZER_KINDS = ("wordpiece", "sentencepiece", "byte_pair", "bytes")
TOKENIZER_STEPS = ("split_cjk", "strip_accents", "split", "lowercase", "wordpiece", "bytes",
                   "sentencepiece", "pre_split", "byte_to_unicode", "byte_pair")
ID_STEPS = ("wordpiece", "bytes", "sentencepiece", "byte_pair")  # the last step makes ids
TOKENIZER_KEYS = ("kind", "normalization", "lowercase", "strip_accents", "vocab_size",
                  "sequence_length", "pad_id", "start_token", "start_id", "end_token", "end_id",
                  "truncation", "padding", "unknown_token", "unknown_id", "suffix_indicator",
                  "split_on_cjk", "max_bytes_per_word", "special_tokens", "vocabulary_file",
                  "sentencepiece_model_file", "merges_file", "pre_split_patterns",
                  "byte_to_unicode", "file_sha256", "applies_to")


def _check_tokenizer(value, where: str, v: _Validation) -> None:
    """A text model's tokenizer: steps in order, ids in range, its files declared."""
    if value is None:
        return
    _keys(value, where, TOKENIZER_KEYS)
    kind = _require(value, "kind", where, str)
    if kind not in TOKENIZER_KINDS:
        raise _malformed(f"{where}.kind", f"{kind!r} is not one of {list(TOKENIZER_KINDS)}")
    steps = _require(value, "normalization", where, list)
    for i, step in enumerate(steps):
        _keys(step, f"{where}.normalization[{i}]", ("step", "how"))
        name = _require(step, "step", f"{where}.normalization[{i}]", str)
        if name not in TOKENIZER_STEPS:
            raise _malformed(f"{where}.normalization[{i}].step",
                             f"{name!r} is not one of {list(TOKENIZER_STEPS)}")
    if not steps or steps[-1]["step"] not in ID_STEPS:
        raise _malformed(f"{where}.normalization", f"must end in the step that makes ids "
                                                   f"(one of {list(ID_STEPS)})")
    for key in ("lowercase", "strip_accents"):
        _require(value, key, where, bool)
    vocab = _number(_require(value, "vocab_size", where, int), f"{where}.vocab_size", lo=1,
                    integer=True)
    length = _number(_require(value, "sequence_length", where, int), f"{where}.sequence_length",
                     lo=1, integer=True)
    for key in ("pad_id", "start_id", "end_id", "unknown_id"):
        if key == "pad_id" or value.get(key) is not None:
            _number(_require(value, key, where, int), f"{where}.{key}", lo=0, hi=vocab - 1,
                    integer=True)
    for key in ("truncation", "padding"):
        _require(value, key, where, str)
    hashes = value.get("file_sha256") or {}
    _kind(hashes, dict, f"{where}.file_sha256")
    for key in ("vocabulary_file", "sentencepiece_model_file", "merges_file"):
        if value.get(key) is not None:
            name = _require(value, key, where, str)
            if name not in hashes:
                raise _malformed(f"{where}.file_sha256", f"has no sha256 for {name!r}")
    for name, sha in hashes.items():
        v.declare(name, sha, f"{where}.file_sha256[{name!r}]")
    if kind == "wordpiece":
        _require(value, "vocabulary_file", where, str)
        _number(_require(value, "unknown_id", where, int), f"{where}.unknown_id", lo=0,
                hi=vocab - 1, integer=True)
        _require(value, "suffix_indicator", where, str)
        _number(_require(value, "max_bytes_per_word", where, int),
                f"{where}.max_bytes_per_word", lo=1, integer=True)
    if kind == "byte_pair":
        for key in ("vocabulary_file", "merges_file"):
            _require(value, key, where, str)
        patterns = _require(value, "pre_split_patterns", where, dict)
        for name, pattern in patterns.items():
            _kind(pattern, str, f"{where}.pre_split_patterns[{name!r}]")
        symbols = _require(value, "byte_to_unicode", where, list)
        if len(symbols) != 256 or len(set(map(str, symbols))) != 256:
            raise _malformed(f"{where}.byte_to_unicode", "must be 256 distinct symbols, one "
                                                         "per byte value")
    for fname, entry in (v.contract.get("files") or {}).items():
        t = (entry.get("inputs") or [{}])[0]
        if t.get("dtype") != "int32" or (t.get("shape") or [None])[-1] != length:
            raise _malformed(where, f"ids are int32 (1, {int(length)}); {fname} takes "
                                    f"{t.get('dtype')} {t.get('shape')}")


# Preprocessing steps, in the order an app applies them to the raw input.
PREPROCESSING: dict[str, Callable[[Any, str, _Validation], None]] = {
    "tokenizer": _check_tokenizer,
    "image": _check_image,
    "normalization": _check_normalization,
}


def _check_preprocessing(value, where: str, v: _Validation) -> None:
    _keys(value, where, tuple(PREPROCESSING))
    for key, check in PREPROCESSING.items():
        check(value.get(key), f"{where}.{key}", v)


def _check_tensor(t, where: str, v: _Validation) -> None:
    _keys(t, where, ("index", "name", "signature_name", "shape", "shape_signature", "dtype",
                     "quantization"))
    _number(_require(t, "index", where, int), f"{where}.index", lo=0, integer=True)
    for key in ("shape", "shape_signature"):
        if key in t or key == "shape":
            dims = _require(t, key, where, list)
            for i, d in enumerate(dims):
                _number(d, f"{where}.{key}[{i}]", lo=-1, integer=True)
    dtype = _require(t, "dtype", where, str)
    if dtype not in DTYPES:
        raise _malformed(f"{where}.dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    q = t.get("quantization")
    if dtype in ("int8", "uint8", "int16") and q is None:
        raise _malformed(f"{where}.quantization", f"an {dtype} tensor needs scale and zero_point")
    if q is not None:
        _keys(q, f"{where}.quantization", ("scale", "zero_point"))
        _number(_require(q, "scale", f"{where}.quantization", (int, float)),
                f"{where}.quantization.scale", lo=0.0, lo_open=True)
        info = np.iinfo(dtype) if dtype in ("int8", "uint8", "int16", "int32", "int64") else None
        if info is None:
            raise _malformed(f"{where}.quantization", f"a {dtype} tensor is not quantized")
        _number(_require(q, "zero_point", f"{where}.quantization", int),
                f"{where}.quantization.zero_point", lo=info.min, hi=info.max, integer=True)


def _check_files(value, where: str, v: _Validation) -> None:
    _kind(value, dict, where)
    if not value:
        raise _malformed(where, "lists no model file")
    for fname, entry in value.items():
        here = f"{where}[{fname!r}]"
        v.name(fname, here)
        if not fname.endswith(".tflite"):
            raise _malformed(here, "model files are .tflite files")
        _keys(entry, here, ("format", "size_bytes", "sha256", "inputs", "outputs",
                            "parity_vs_reference"))
        v.declare(fname, _require(entry, "sha256", here, str), here)
        for side in ("inputs", "outputs"):
            tensors = _require(entry, side, here, list)
            if not tensors:
                raise _malformed(f"{here}.{side}", "is empty")
            for i, t in enumerate(tensors):
                _check_tensor(t, f"{here}.{side}[{i}]", v)
        norm = (v.contract.get("preprocessing") or {}).get("normalization")
        width = entry["inputs"][0]["shape"][-1] if entry["inputs"][0]["shape"] else None
        if norm and width not in (None, -1) and width != len(norm["mean"]):
            raise _malformed(f"{here}.inputs[0].shape", f"last axis {width} does not match the "
                                                        f"{len(norm['mean'])} normalization "
                                                        "values")
        labels = v.contract.get("labels") or []
        out = entry["outputs"][0]["shape"]
        if labels and (not out or out[-1] != len(labels)):
            raise _malformed(f"{here}.outputs[0].shape", f"{out} does not end in the "
                                                         f"{len(labels)} labels")


def _check_golden_ref(value, where: str, v: _Validation) -> None:
    _keys(value, where, ("file", "examples"))
    if _require(value, "file", where, str) != GOLDEN:
        raise _malformed(f"{where}.file", f"must be {GOLDEN!r}")
    _number(_require(value, "examples", where, int), f"{where}.examples", lo=1, integer=True)


def _check_calibration(value, where: str, v: _Validation) -> None:
    """Written by the evaluate stage: the temperature fitted on the validation split."""
    _keys(value, where, ("temperature", "fitted_on", "apply"))
    _number(_require(value, "temperature", where, (int, float)), f"{where}.temperature",
            lo=0, lo_open=True, hi=1000)
    for key in ("fitted_on", "apply"):
        if key in value:
            _kind(value[key], str, f"{where}.{key}")


def _check_how_to_run(value, where: str, v: _Validation) -> None:
    _kind(value, dict, where)  # prose for people; the checker follows the blocks above


# Every block of contract.json: name -> (required, check). Unknown blocks are refused.
CONTRACT_BLOCKS: dict[str, tuple[bool, Callable[[Any, str, _Validation], None]]] = {
    "schema": (True, _check_schema),
    "model": (True, _check_model),
    "labels": (False, _check_labels),
    "preprocessing": (False, _check_preprocessing),
    "how_to_run": (False, _check_how_to_run),
    "calibration": (False, _check_calibration),
    "files": (True, _check_files),
    "golden": (False, _check_golden_ref),
}


def validate_contract(contract: dict, bundle_dir: Path) -> _Validation:
    """Checks every block of `contract` against the schema, then the declared files.

    Raises:
        MalformedBundleError: naming the key, the problem and the fix.
    """
    v = _Validation(bundle_dir, contract)
    _keys(contract, CONTRACT, tuple(CONTRACT_BLOCKS))
    for key, (required, check) in CONTRACT_BLOCKS.items():
        if key not in contract:
            if required:
                raise _malformed(CONTRACT, f"missing key {key!r}")
            continue
        check(contract[key], f"{CONTRACT} {key}", v)
    return v


# ---------------------------------------------------------------------------
# Reading the bundle


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise MalformedBundleError(f"{path}: missing. A bundle holds {CONTRACT} and {GOLDEN}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise MalformedBundleError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise MalformedBundleError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; a bundle holds finite numbers only")


def _check_golden(golden: dict, contract: dict) -> None:
    _keys(golden, GOLDEN, ("schema", "inputs", "expected", "reference", "images", "text"))
    if golden.get("schema") != GOLDEN_SCHEMA:
        raise _malformed(f"{GOLDEN} schema", f"is {golden.get('schema')!r}, this checker reads "
                                             f"{GOLDEN_SCHEMA!r}")
    inputs = _require(golden, "inputs", GOLDEN, list)
    if not inputs:
        raise _malformed(f"{GOLDEN} inputs", "is empty")
    n = None
    for i, g in enumerate(inputs):
        arr = _array(g, f"{GOLDEN} inputs[{i}]")
        if n is not None and len(arr) != n:
            raise _malformed(f"{GOLDEN} inputs[{i}]", f"has {len(arr)} examples, inputs[0] {n}")
        n = len(arr)
    expected = _require(golden, "expected", GOLDEN, dict)
    for fname in contract["files"]:
        if fname not in expected:
            raise _malformed(f"{GOLDEN} expected", f"no outputs for {fname!r} (the contract "
                                                   "lists it)")
    for fname, entry in expected.items():
        where = f"{GOLDEN} expected[{fname!r}]"
        if fname not in contract["files"]:
            raise _malformed(where, "the contract lists no such file")
        _keys(entry, where, ("outputs", "atol", "rtol", "top1"))
        outs = _require(entry, "outputs", where, list)
        arrays = [_array(o, f"{where}.outputs[{k}]") for k, o in enumerate(outs)]
        if len(arrays) != len(contract["files"][fname]["outputs"]) or any(
                len(a) != n for a in arrays):
            raise _malformed(where, f"needs {len(contract['files'][fname]['outputs'])} output "
                                    f"arrays of {n} examples each")
        biggest = max(float(np.max(np.abs(a), initial=0.0)) for a in arrays)
        max_atol = max(ATOL_FLOOR, MAX_ATOL_SHARE * biggest)
        _number(_require(entry, "atol", where, (int, float)), f"{where}.atol", lo=0.0,
                hi=max_atol)
        _number(_require(entry, "rtol", where, (int, float)), f"{where}.rtol", lo=0.0,
                hi=MAX_RTOL)
    if "reference" in golden:
        _array(golden["reference"], f"{GOLDEN} reference")
    tokenizer = (contract.get("preprocessing") or {}).get("tokenizer")
    if tokenizer is not None or "text" in golden:
        where = f"{GOLDEN} text"
        if tokenizer is None:
            raise _malformed(where, "golden strings need the contract's preprocessing.tokenizer")
        _keys(_require(golden, "text", GOLDEN, dict), where, ("stage", "strings"))
        strings = _require(golden["text"], "strings", where, list)
        if len(strings) != n or not all(isinstance(t, str) for t in strings):
            raise _malformed(f"{where}.strings", f"needs {n} strings, one per golden input")
    images = golden.get("images") or []
    if images and not (contract.get("preprocessing") or {}).get("image"):
        raise _malformed(f"{GOLDEN} images", "decoded images need the contract's "
                                             "preprocessing.image block")
    if images and len(images) != n:
        raise _malformed(f"{GOLDEN} images", f"has {len(images)} images for {n} examples")
    for i, g in enumerate(images):
        arr = _array(g, f"{GOLDEN} images[{i}]")
        if arr.ndim != 3 or arr.min() < 0 or arr.max() > 255 or (arr != np.round(arr)).any():
            raise _malformed(f"{GOLDEN} images[{i}]", "must be decoded 8-bit pixels "
                                                      "(height, width, channels) in 0..255")


def load_bundle(bundle_dir: Path) -> tuple[dict, dict]:
    """Reads `contract.json` and `golden.json` and validates them completely.

    The contract's schema (every block), the golden file, and every declared
    file's presence and sha256 are checked before any model is loaded.

    Raises:
        MalformedBundleError: naming the file, the key and the problem.
    """
    if not bundle_dir.is_dir():
        raise MalformedBundleError(f"{bundle_dir}: not a directory.")
    contract = _load_json(bundle_dir / CONTRACT)
    validation = validate_contract(contract, bundle_dir)
    golden = _load_json(bundle_dir / GOLDEN)
    _check_golden(golden, contract)
    validation.check_files()
    return contract, golden


def _array(entry: dict, where: str) -> np.ndarray:
    _keys(entry, where, ("name", "stage", "source", "shape", "data"))
    data = _require(entry, "data", where, list)
    shape = _require(entry, "shape", where, list)
    try:
        arr = np.asarray(data, dtype="float64")
    except (TypeError, ValueError) as e:
        raise MalformedBundleError(f"{where}: data is not a numeric array ({e}).") from None
    if list(arr.shape) != shape or arr.ndim < 1 or len(arr) == 0:
        raise MalformedBundleError(f"{where}: data has shape {list(arr.shape)}, says {shape}.")
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise MalformedBundleError(f"{where}: {bad} of {arr.size} values are not finite; "
                                   "golden vectors hold finite numbers only. Re-export the "
                                   "bundle.")
    return arr


# ---------------------------------------------------------------------------
# One model file, the way an app runs it


def check_tflite_bytes(path: Path) -> bytes:
    """Reads a `.tflite` file and checks the flatbuffer identifier.

    Raises:
        MalformedBundleError: the file is missing, too short, or not TFLite.
    """
    if not path.is_file():
        raise MalformedBundleError(f"{path}: model file listed in the contract is missing.")
    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        raise MalformedBundleError(
            f"{path}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier at byte 4;"
            f" {len(content)} bytes). The file is corrupt or truncated: re-export it."
        )
    return content


@contextlib.contextmanager
def _quiet_stderr():
    """LiteRT's C++ notices ("INFO: Created TensorFlow Lite XNNPACK delegate") go to fd 2;
    held back here so that a malformed bundle's one line is all stderr shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter(path: Path, content: bytes, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    try:
        with _quiet_stderr():
            interp = Interpreter(model_content=content, num_threads=num_threads)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise MalformedBundleError(
            f"{path}: the LiteRT interpreter cannot load it ({str(e).strip()}). "
            "The file is corrupt or truncated, or needs ops this runtime lacks: re-export it."
        ) from None
    return interp


def _quant(t: dict) -> tuple[float, int] | None:
    q = t.get("quantization")
    if not q:
        return None
    return float(q["scale"]), int(q["zero_point"])


def _check_against_contract(path: Path, side: str, details: list[dict], tensors: list[dict]):
    if len(details) != len(tensors):
        raise MalformedBundleError(
            f"{path}: the model has {len(details)} {side}, the contract lists {len(tensors)}."
        )
    for d, t in zip(details, tensors, strict=True):
        where = f"{path}: {side[:-1]} {t.get('signature_name') or d['name']!r}"
        if int(t["index"]) != int(d["index"]):
            raise MalformedBundleError(
                f"{where} is tensor index {int(d['index'])} in the model, {t['index']} in the "
                f"contract (the model's {side}: {[int(x['index']) for x in details]})."
            )
        if np.dtype(d["dtype"]).name != t["dtype"]:
            raise MalformedBundleError(
                f"{where} is {np.dtype(d['dtype']).name} in the model, {t['dtype']} in the "
                "contract."
            )
        if [int(s) for s in d["shape"][1:]] != [int(s) for s in t["shape"][1:]]:
            raise MalformedBundleError(
                f"{where} has shape {d['shape'].tolist()} in the model, {t['shape']} in the "
                "contract."
            )
        scale, zp = d["quantization"]
        q = _quant(t)
        if np.issubdtype(np.dtype(d["dtype"]), np.integer) and (scale or q is not None):
            # (an integer tensor with scale 0 is not quantized: token ids)
            if q is None or not np.isclose(q[0], scale, rtol=1e-6, atol=0) or q[1] != zp:
                raise MalformedBundleError(
                    f"{where} is quantized with scale={scale}, zero_point={zp} in the model; "
                    f"the contract says {t.get('quantization')}."
                )


# ---------------------------------------------------------------------------
# The image block: decoded uint8 pixels -> the model's input size (NumPy port of the
# training pipeline, kdl.data.images: tf.image.resize with half-pixel centres, no
# antialiasing, float32; then round half to even and clip to [0, 255]).

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _axis(n_in: int, n_out: int, method: str):
    scale = np.float32(n_in / n_out)
    centre = (np.arange(n_out, dtype="float32") + np.float32(0.5)) * scale
    if method == "nearest":
        return np.minimum(np.floor(centre), n_in - 1).astype(int), None, None
    src = centre - np.float32(0.5)
    low = np.floor(src)
    lerp = (src - low).astype("float32")
    lo = np.clip(low, 0, n_in - 1).astype(int)
    hi = np.clip(np.ceil(src), 0, n_in - 1).astype(int)
    return lo, hi, lerp


def resize(x: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
    """`tf.image.resize(x, (height, width), method)` for one `(h, w, c)` float32 image."""
    x = np.asarray(x, "float32")
    y0, y1, ly = _axis(x.shape[0], height, method)
    x0, x1, lx = _axis(x.shape[1], width, method)
    if method == "nearest":
        return x[y0][:, x0]
    lx = lx[None, :, None]
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * lx
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * lx
    return (top + (bottom - top) * ly[:, None, None]).astype("float32")


def preprocess_image(pixels: np.ndarray, image: dict) -> np.ndarray:
    """The contract's `preprocessing.image`: decoded 8-bit pixels `(h, w, c)` (RGB, or one
    grey channel) -> float32 `(height, width, channels)` in [0, 255], as in training."""
    x = np.asarray(pixels, "float32")
    x = x[..., None] if x.ndim == 2 else x[..., :3]
    if image["color"] == "grayscale" and x.shape[-1] == 3:
        x = np.floor(x @ np.asarray(GRAY_WEIGHTS, "float32") + 0.5)[..., None]
    elif image["color"] == "rgb" and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    th, tw = (int(s) for s in image["image_size"])
    h, w = x.shape[:2]
    method = image["resize"]
    if image["fit"] == "crop":  # Keras's crop_to_aspect_ratio, centred
        ch, cw = min(h, max(w * th // tw, 1)), min(w, max(h * tw // th, 1))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = resize(x[top:top + ch, left:left + cw], th, tw, method)
    elif image["fit"] == "pad":  # fit inside, centred, zeros around
        scale = min(th / h, tw / w)
        nh = int(np.clip(np.round(h * scale), 1, th))
        nw = int(np.clip(np.round(w * scale), 1, tw))
        top, left = (th - nh) // 2, (tw - nw) // 2
        out = np.zeros((th, tw, x.shape[-1]), "float32")
        out[top:top + nh, left:left + nw] = resize(x, nh, nw, method)
        x = out
    else:
        x = resize(x, th, tw, method)
    return np.clip(np.round(x), 0, 255).astype("float32")


def check_image_port(contract: dict, golden: dict) -> list[str]:
    """The decoded golden images through `preprocess_image` must give the golden inputs
    (within one 8-bit level: float rounding at .5). Returns mismatch lines."""
    image = (contract.get("preprocessing") or {}).get("image")
    images = golden.get("images") or []
    if not image or not images:
        return []
    inputs = _array(golden["inputs"][0], f"{GOLDEN} inputs[0]")
    out = []
    for i, g in enumerate(images):
        got = preprocess_image(_array(g, f"{GOLDEN} images[{i}]"), image)
        if got.shape != inputs[i].shape:
            out.append(f"image {i}: preprocessing gives shape {list(got.shape)}, the golden "
                       f"input is {list(inputs[i].shape)}")
            continue
        diff = np.abs(got - inputs[i])
        if not (diff <= 1).all():
            out.append(f"image {i}: the image preprocessing (resize {image['resize']}, fit "
                       f"{image['fit']}) differs from the golden input by up to "
                       f"{float(diff.max()):g} levels at {int((diff > 1).sum())} values")
    return out


def normalize(x: np.ndarray, contract: dict) -> np.ndarray:
    """The contract's preprocessing: `(x - mean) / std` over the last axis, float32."""
    norm = (contract.get("preprocessing") or {}).get("normalization")
    x = np.asarray(x, dtype="float32")
    if norm is None:
        return x
    mean = np.asarray(norm["mean"], dtype="float32")
    std = np.asarray(norm["std"], dtype="float32")
    return ((x - mean) / std).astype("float32")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float to integer the TFLite way: round half away from zero, then clamp."""
    info = np.iinfo(dtype)
    v = np.asarray(x, dtype="float64") / scale
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(q, dtype="float64") - zero_point) * scale).astype("float32")


def run_like_an_app(interp, contract_inputs: list[dict], contract_outputs: list[dict],
                    raw_inputs: list[np.ndarray], contract: dict) -> list[np.ndarray]:
    """Runs one example (batch 1) through `interp` following the contract alone.

    Args:
        interp: an allocated `ai_edge_litert.interpreter.Interpreter`.
        contract_inputs, contract_outputs: the file's tensor entries from the contract.
        raw_inputs: one raw (un-normalized) array per model input, without batch axis.
        contract: the whole contract (its preprocessing applies to input 0).

    Returns:
        One float32 array per output, without batch axis.
    """
    for pos, (t, x) in enumerate(zip(contract_inputs, raw_inputs, strict=True)):
        x = normalize(x, contract) if pos == 0 else np.asarray(x, "float32")
        q = _quant(t)
        if q is not None and np.issubdtype(np.dtype(t["dtype"]), np.integer):
            x = quantize(x, q[0], q[1], t["dtype"])
        else:  # float input, or integer token ids (no quantization): the values as they are
            x = x.astype(t["dtype"])
        x = x[None]
        idx = int(t["index"])
        shape = next(d["shape"] for d in interp.get_input_details() if d["index"] == idx)
        if list(shape) != list(x.shape):
            interp.resize_tensor_input(idx, list(x.shape))
            interp.allocate_tensors()
        interp.set_tensor(idx, x)
    interp.invoke()
    outs = []
    for t in contract_outputs:
        y = interp.get_tensor(int(t["index"]))[0]
        q = _quant(t)
        outs.append(dequantize(y, *q) if q and np.issubdtype(y.dtype, np.integer)
                    else y.astype("float32"))
    return outs


# ---------------------------------------------------------------------------
# The check


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# A verbatim copy of `kdl.gates.out_of_tolerance` (this file imports numpy only);
# tests/export/test_gates.py checks that the two stay identical.
def out_of_tolerance(got, expected, atol: float = 0.0, rtol: float = 0.0) -> np.ndarray:
    """Where `|got - expected| <= atol + rtol * |expected|` does NOT hold, or a value is NaN/inf.

    Returns:
        A boolean array of the broadcast shape, True where the check fails.
    """
    got = np.asarray(got, dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    finite = np.isfinite(got) & np.isfinite(expected)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.abs(got - expected) <= atol + rtol * np.abs(expected)
    return ~(finite & close)


def verify_file(bundle_dir: Path, fname: str, contract: dict, golden: dict,
                num_threads: int = 1) -> tuple[list[str], dict]:
    """Replays the golden vectors through one `.tflite` file.

    Returns:
        `(mismatches, summary)`: human-readable mismatch lines (empty on pass)
        and figures (`examples`, `max_abs_diff`, `atol`, `rtol`).

    Raises:
        MalformedBundleError: the file or its contract entry is unusable.
    """
    path = bundle_dir / fname
    entry = contract["files"][fname]
    content = check_tflite_bytes(path)
    interp = _interpreter(path, content, num_threads)
    _check_against_contract(path, "inputs", interp.get_input_details(), entry["inputs"])
    _check_against_contract(path, "outputs", interp.get_output_details(), entry["outputs"])

    inputs = [_array(g, f"{GOLDEN} inputs[{i}]") for i, g in enumerate(golden["inputs"])]
    if len(inputs) != len(entry["inputs"]):
        raise MalformedBundleError(
            f"{GOLDEN}: {len(inputs)} golden inputs, {fname} takes {len(entry['inputs'])}."
        )
    n = len(inputs[0])
    exp_entry = golden["expected"][fname]
    expected = [_array(o, f"{GOLDEN} expected[{fname!r}].outputs[{i}]")
                for i, o in enumerate(exp_entry["outputs"])]
    if len(expected) != len(entry["outputs"]) or any(len(e) != n for e in expected):
        raise MalformedBundleError(
            f"{GOLDEN} expected[{fname!r}]: needs {len(entry['outputs'])} output arrays of "
            f"{n} examples each."
        )
    atol, rtol = float(exp_entry["atol"]), float(exp_entry["rtol"])
    classify = (contract.get("model") or {}).get("task") == "classification"
    n_labels = len(contract.get("labels") or [])

    mismatches: list[str] = []
    worst = 0.0
    for i in range(n):
        got = run_like_an_app(interp, entry["inputs"], entry["outputs"],
                              [x[i] for x in inputs], contract)
        for k, (g, e) in enumerate(zip(got, expected, strict=True)):
            e = e[i]
            name = entry["outputs"][k].get("signature_name") or entry["outputs"][k].get("name")
            if g.shape != e.shape:
                raise MalformedBundleError(
                    f"{GOLDEN} expected[{fname!r}] output {name!r}: example shape {list(e.shape)}"
                    f", the model gives {list(g.shape)}."
                )
            diff = np.abs(g.astype("float64") - e)
            bad = out_of_tolerance(g, e, atol, rtol)
            if not np.isfinite(diff).all():
                worst = float("nan")
            elif worst == worst:  # stays NaN once a value was not finite
                worst = max(worst, float(diff.max(initial=0.0)))
            if bad.any():
                excess = np.where(np.isfinite(diff), diff - (atol + rtol * np.abs(e)), np.inf)
                j = int(np.argmax(excess))
                mismatches.append(
                    f"example {i}, output {name!r}: {int(bad.sum())} of {bad.size} values off; "
                    f"worst at flat index {j}: got {g.ravel()[j]:.6g}, expected "
                    f"{e.ravel()[j]:.6g} (|diff| {diff.ravel()[j]:.3g} > "
                    f"atol {atol:g} + rtol {rtol:g} * |expected|; NaN/inf always fail)"
                )
            if classify and k == 0 and e.ndim == 1 and e.shape[-1] == n_labels > 1:
                top2 = np.sort(e)[-2:]
                if top2[1] - top2[0] > 2 * (atol + rtol * abs(top2[1])):  # unambiguous
                    if int(np.argmax(g)) != int(np.argmax(e)):
                        mismatches.append(
                            f"example {i}: top-1 class {int(np.argmax(g))} "
                            f"({contract['labels'][int(np.argmax(g))]!r}), expected "
                            f"{int(np.argmax(e))} ({contract['labels'][int(np.argmax(e))]!r})"
                        )
    return mismatches, {"examples": n, "max_abs_diff": worst, "atol": atol, "rtol": rtol}


def _reference_tokenizer():
    try:
        from pipelines.tokenizer_reference import SUPPORTED, ReferenceTokenizer, read_vocabulary
    except ImportError:  # this file copied alone with tokenizer_reference.py beside it
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tokenizer_reference import SUPPORTED, ReferenceTokenizer, read_vocabulary
    return SUPPORTED, ReferenceTokenizer, read_vocabulary


def verify_tokenizer(bundle_dir: Path, contract: dict, golden: dict) -> tuple[list[str], str]:
    """Golden strings -> the reference tokenizer -> must equal the golden token ids.

    Returns:
        `(mismatches, summary line)`; no mismatches and an empty line for bundles
        without a tokenizer.

    Raises:
        MalformedBundleError: the vocabulary file does not fit the contract.
    """
    spec = (contract.get("preprocessing") or {}).get("tokenizer")
    if spec is None:
        return [], ""
    kind = spec["kind"]  # validated with the contract (_check_tokenizer, _check_golden)
    strings = golden["text"]["strings"]
    ids = _array(golden["inputs"][0], f"{GOLDEN} inputs[0]")
    supported, reference, read_vocabulary = _reference_tokenizer()
    if kind not in supported:
        return [], (f"tokenizer {kind}: strings not replayed (the reference tokenizer "
                    f"implements {', '.join(supported)}); ids -> outputs checked")
    vocab = []
    if spec.get("vocabulary_file"):
        try:
            vocab = read_vocabulary(bundle_dir / spec["vocabulary_file"])
        except ValueError as e:  # includes UnicodeDecodeError and JSON errors
            raise MalformedBundleError(str(e)) from None
        if len(vocab) != spec["vocab_size"]:
            raise MalformedBundleError(f"{spec['vocabulary_file']}: {len(vocab)} tokens, the "
                                       f"contract says vocab_size {spec['vocab_size']}.")
    tok = reference.from_bundle(bundle_dir, spec)
    mismatches = []
    for i, s in enumerate(strings):
        got = tok.encode(s)
        want = [int(v) for v in ids[i]]
        if got != want:
            j = next(k for k, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            mismatches.append(f"text {i} {s[:40]!r}: the reference tokenizer gives id {got[j]} "
                              f"at position {j}, golden.json has {want[j]}")
    return mismatches, f"tokenizer {kind}: {len(strings)} golden strings"


def verify_bundle(bundle_dir: str | Path, num_threads: int = 1) -> tuple[int, list[str]]:
    """Checks every model file in a bundle.

    Returns:
        `(exit_code, report_lines)`, exit code 0 (pass), 1 (mismatch) or 2
        (malformed; then `report_lines` is the one line that says why).
    """
    bundle_dir = Path(bundle_dir)
    try:
        contract, golden = load_bundle(bundle_dir)
    except MalformedBundleError as e:
        return EXIT_MALFORMED, [f"MALFORMED {e}"]
    code, lines = EXIT_OK, []
    try:
        mismatches, head = verify_tokenizer(bundle_dir, contract, golden)
    except MalformedBundleError as e:
        return EXIT_MALFORMED, [f"MALFORMED {e}"]
    if mismatches:
        code = EXIT_MISMATCH
        lines.append(f"FAIL {head}")
        lines.extend(f"    {m}" for m in mismatches)
    elif head:
        lines.append(f"PASS {head}")
    port = check_image_port(contract, golden)
    if port:
        code = EXIT_MISMATCH
        lines.append(f"FAIL image preprocessing: {len(golden['images'])} decoded golden images")
        lines.extend(f"    {m}" for m in port)
    elif golden.get("images"):
        lines.append(f"PASS image preprocessing: {len(golden['images'])} decoded golden images "
                     "resize to the golden inputs")
    for fname in contract["files"]:
        try:
            mismatches, s = verify_file(bundle_dir, fname, contract, golden, num_threads)
        except MalformedBundleError as e:
            return EXIT_MALFORMED, [f"MALFORMED {fname}: {e}"]
        head = (f"{fname}: {s['examples']} golden examples, max |diff| {s['max_abs_diff']:.3g} "
                f"(atol {s['atol']:g}, rtol {s['rtol']:g})")
        if mismatches:
            code = max(code, EXIT_MISMATCH)
            lines.append(f"FAIL {head}")
            lines.extend(f"    {m}" for m in mismatches)
        else:
            lines.append(f"PASS {head}")
    return code, lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 pass, 1 mismatch, 2 malformed).

    A malformed bundle prints one line on stderr, naming the problem and the fix.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipelines verify-bundle",
        description="Replay a mobile bundle's golden vectors through each .tflite file "
                    "(numpy + ai-edge-litert only).",
    )
    parser.add_argument("bundle_dir", help="the bundle directory (holds contract.json)")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="print failures only")
    args = parser.parse_args(argv)
    code, lines = verify_bundle(args.bundle_dir, num_threads=args.threads)
    if code == EXIT_MALFORMED:
        print(f"verify-bundle: bundle MALFORMED: {lines[0].removeprefix('MALFORMED ')}",
              file=sys.stderr)
        return code
    for line in lines:
        if not args.quiet or not line.startswith("PASS"):
            print(line, file=sys.stdout if code == EXIT_OK else sys.stderr)
    verdict = {EXIT_OK: "bundle OK", EXIT_MISMATCH: "bundle FAILED: golden vectors do not "
               "reproduce"}[code]
    print(f"{verdict}: {args.bundle_dir}", file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
