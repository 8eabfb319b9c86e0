"""The mobile bundle: the `.tflite` files an app ships, their contract and golden vectors.

Layout of `bundle/`:

- the chosen `.tflite` files (e.g. `model_fp32.tflite`, `model_int8.tflite`);
- `contract.json`: per file its input and output tensors (index, name,
  signature name, shape, dtype, quantization scale and zero point), sha256
  and size; the preprocessing to apply (normalization mean/std), label
  names, task, model name and version and the source run;
- `golden.json`: a few raw inputs (before preprocessing) and, per file, the
  outputs that file must give for them, with the tolerance to compare at.

`pipelines/verify_bundle.py` replays `golden.json` through each file with
numpy and `ai-edge-litert` only, exactly as an app's unit test would.

The bundle is written into a temporary directory beside the target and
renamed into place, so a failed write never leaves half a bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdl.export.litert import LiteRTRunner
from kdl.gates import nonfinite_count

CONTRACT_SCHEMA = "kdl.bundle/1"
GOLDEN_SCHEMA = "kdl.golden/1"

# Tolerance when replaying a file's own golden outputs (same file, another
# device or runtime build): float kernels may differ in summation order,
# dynamic-range quantization rounds activations at run time, and integer
# kernels may differ by a rounding step. `atol_steps` is in units of the
# output tensor's quantization scale.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "tflite_fp32": {"atol": 1e-4, "rtol": 1e-4},
    "tflite_fp16": {"atol": 1e-3, "rtol": 1e-3},
    "tflite_dynamic": {"atol": 1e-2, "rtol": 1e-2},
    "tflite_int8": {"atol_steps": 2.0, "rtol": 0.0},
}
_FALLBACK_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}

HOW_TO = {
    "order": "image inputs: decode and resize as preprocessing.image says; normalize input 0, "
             "quantize integer inputs, run at batch 1, dequantize integer outputs",
    "image": "decode to 8-bit RGB (or grey: floor(0.299 R + 0.587 G + 0.114 B + 0.5)), fit "
             "(stretch / centre-crop / pad to the aspect ratio), resize (half-pixel centres, "
             "no antialiasing), round half to even, clip to [0, 255]; NHWC float32, or the "
             "pixels as they are for a uint8 input (scale 1, zero point 0)",
    "normalize": "x = (raw - mean) / std over the last axis, in float32 (the input)",
    "quantize": "q = clamp(round_half_away_from_zero(x / scale) + zero_point, dtype min, "
                "dtype max)",
    "dequantize": "y = (q - zero_point) * scale",
    "compare": "|y - expected| <= atol + rtol * |expected| (golden.json, per file)",
}


def _tensor_entry(detail: dict, signature_names: dict[int, str]) -> dict[str, Any]:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail["quantization"]
    quant = None
    if np.issubdtype(np.dtype(dtype), np.integer) and scale:  # not token ids (scale 0)
        scales = detail["quantization_parameters"]["scales"]
        if len(scales) > 1:
            raise ValueError(
                f"tensor {detail['name']!r} has per-channel quantization ({len(scales)} scales); "
                "model inputs and outputs must be per-tensor for the app contract."
            )
        quant = {"scale": float(scale), "zero_point": int(zero_point)}
    return {
        "index": int(detail["index"]),
        "name": detail["name"],
        "signature_name": signature_names.get(int(detail["index"])),
        "shape": [int(s) for s in detail["shape"]],
        "shape_signature": [int(s) for s in detail.get("shape_signature", detail["shape"])],
        "dtype": dtype,
        "quantization": quant,
    }


def _signature_names(interp) -> tuple[dict[int, str], dict[int, str]]:
    sigs = interp.get_signature_list()
    if not sigs:
        return {}, {}
    runner = interp.get_signature_runner(next(iter(sigs)))
    ins = {int(d["index"]): n for n, d in runner.get_input_details().items()}
    outs = {int(d["index"]): n for n, d in runner.get_output_details().items()}
    return ins, outs


def _run_batch1(path: Path, x: np.ndarray) -> tuple[bytes, dict, np.ndarray]:
    """Runs normalized examples one at a time through `LiteRTRunner`, as an app does.

    Returns the file's bytes (checked: `TFL3`, loads, allocates), its tensor
    entries for the contract and the float outputs.
    """
    runner = LiteRTRunner(path, num_threads=1)
    content = path.read_bytes()
    interp = runner.interpreter
    (d_in,), (d_out,) = interp.get_input_details(), interp.get_output_details()
    if list(d_in["shape"][1:]) != list(x.shape[1:]):
        raise ValueError(
            f"golden inputs of shape {list(x.shape)} do not match model input "
            f"{d_in['name']!r} of shape {d_in['shape_signature'].tolist()} ({path})"
        )
    sig_in, sig_out = _signature_names(interp)
    entries = {"inputs": [_tensor_entry(d_in, sig_in)], "outputs": [_tensor_entry(d_out, sig_out)]}
    if entries["inputs"][0]["shape"][0] != 1:
        entries["inputs"][0]["shape"][0] = 1
        entries["outputs"][0]["shape"][0] = 1
    outs = np.concatenate([runner(x[i:i + 1]) for i in range(len(x))])
    return content, entries, outs


def _tolerance(fmt: str, outputs: list[dict], overrides: Mapping[str, Mapping[str, float]]):
    tol = dict(DEFAULT_TOLERANCES.get(fmt, _FALLBACK_TOLERANCE))
    tol.update(overrides.get(fmt, {}))
    if "atol_steps" in tol:
        steps = tol.pop("atol_steps")
        scales = [o["quantization"]["scale"] for o in outputs if o["quantization"]]
        tol["atol"] = steps * max(scales) if scales else _FALLBACK_TOLERANCE["atol"]
    unknown = set(tol) - {"atol", "rtol"}
    if unknown:
        raise ValueError(f"tolerance for {fmt!r}: unknown keys {sorted(unknown)}; "
                         "use atol, rtol (or atol_steps for integer outputs)")
    return {"atol": float(tol["atol"]), "rtol": float(tol.get("rtol", 0.0))}


def _json_array(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a, "float32")
    return {"shape": list(a.shape), "data": a.astype("float64").tolist()}


def _normalization_dict(normalization) -> dict[str, Any] | None:
    if normalization is None:
        return None
    d = normalization.to_dict() if hasattr(normalization, "to_dict") else dict(normalization)
    if "mean" not in d or "std" not in d:
        raise ValueError("normalization needs 'mean' and 'std' (Normalizer.to_dict())")
    d["mean"] = np.asarray(d["mean"], "float32").ravel().astype("float64").tolist()
    d["std"] = np.asarray(d["std"], "float32").ravel().astype("float64").tolist()
    if len(d["mean"]) != len(d["std"]):
        raise ValueError(f"normalization mean has {len(d['mean'])} values, std {len(d['std'])}")
    d.setdefault("formula", "(x - mean) / std, over the last axis")
    d["applies_to"] = "input 0"
    return d


VOCABULARY_FILE = "vocabulary.txt"
SENTENCEPIECE_FILE = "tokenizer.model"
BPE_VOCABULARY_FILE = "vocab.json"  # byte_pair: token -> id
MERGES_FILE = "merges.txt"  # byte_pair: "left right" per line, rank order


def _tokenizer_block(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The contract's `preprocessing.tokenizer` block and the files it names."""
    block = {k: v for k, v in spec.items()
             if k not in ("vocabulary", "proto_hex", "preset", "merges")}
    files: dict[str, bytes] = {}
    if spec.get("kind") == "byte_pair":  # GPT-2 / RoBERTa layout
        vocab = {str(t): i for i, t in enumerate(spec["vocabulary"])}
        files[BPE_VOCABULARY_FILE] = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
        files[MERGES_FILE] = "".join(f"{m}\n" for m in ["#version: 0.2", *spec["merges"]]
                                     ).encode("utf-8")
        block.update(vocabulary_file=BPE_VOCABULARY_FILE, merges_file=MERGES_FILE)
    elif spec.get("vocabulary"):
        vocab = [str(t) for t in spec["vocabulary"]]
        if any("\n" in t for t in vocab):
            raise ValueError("a vocabulary token holds a newline; it cannot be a line of "
                             f"{VOCABULARY_FILE}")
        files[VOCABULARY_FILE] = ("\n".join(vocab) + "\n").encode("utf-8")
        block["vocabulary_file"] = VOCABULARY_FILE
    if spec.get("proto_hex"):
        files[SENTENCEPIECE_FILE] = bytes.fromhex(spec["proto_hex"])
        block["sentencepiece_model_file"] = SENTENCEPIECE_FILE
    block["file_sha256"] = {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}
    block["applies_to"] = "input 0: int32 token ids, (1, sequence_length)"
    return block, files


def replace_dir(tmp: Path, target: Path) -> None:
    """Moves `tmp` to `target`, replacing an existing `target` all or nothing."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bundle(
    bundle_dir: str | Path,
    tflite_files: Mapping[str, str | Path],
    golden_inputs: np.ndarray,
    *,
    normalization: Any = None,
    label_names: Sequence[str] = (),
    task: str = "classification",
    model_name: str = "",
    model_version: str = "",
    source_run: str = "",
    reference_outputs: np.ndarray | None = None,
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    image: Mapping[str, Any] | None = None,
    golden_images: Sequence[np.ndarray] = (),
    text: Sequence[str] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
) -> Path:
    """Writes the mobile bundle directory, atomically.

    Args:
        bundle_dir: the directory to create (replaced whole if it exists).
        tflite_files: format name to `.tflite` path, e.g.
            `{"tflite_fp32": "run/model_fp32.tflite"}`; files keep their names.
        golden_inputs: a few RAW examples (before normalization), batch axis
            first. Models have one input and one output (as `LiteRTRunner`).
        normalization: a `kdl.data.Normalizer` or its `to_dict()`, applied
            by the app to the input; None when the model takes raw input.
        label_names: class names, index = class id.
        task: "classification" or "regression".
        model_name, model_version, source_run: recorded in the contract.
        reference_outputs: the Keras model's outputs on the normalized golden
            inputs; stored in `golden.json` and compared (max abs diff,
            top-1 agreement) into the contract for information.
        tolerances: per format overrides of `DEFAULT_TOLERANCES`.
        metadata: more JSON-able facts for the contract's `model` section
            (tracking run id, data fingerprint, ...).
        text: text models: the raw golden strings; `golden_inputs` are then their
            token ids (what `tokenizer` gives), and `golden.json` carries both.
        tokenizer: text models: the tokenizer spec (`kdl.data.tokenizers.tokenizer_spec`);
            its vocabulary (or SentencePiece model) becomes a file of the bundle and
            the rest the contract's `preprocessing.tokenizer` block.
        image: image models: the decode/resize steps (`ImageSpec.to_dict()` and the
            model's `model_input` range), the contract's `preprocessing.image`;
            `golden_inputs` are then the resized pixels.
        golden_images: the decoded 8-bit pixels `(h, w, c)` each golden input was
            resized from, so an app's resize port is checked too.

    Returns:
        The bundle directory.

    Raises:
        ExportFileError: a `.tflite` file is missing, corrupt or truncated.
        ValueError: golden inputs that do not fit a model, bad normalization.
    """
    bundle_dir = Path(bundle_dir)
    if not tflite_files:
        raise ValueError("tflite_files is empty: choose at least one .tflite file for the bundle")
    names = [Path(p).name for p in tflite_files.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"bundle files need distinct names, got {names}")
    raw = np.asarray(golden_inputs, "int32" if tokenizer is not None else "float32")
    if raw.ndim < 2 or len(raw) == 0:
        raise ValueError(f"golden_inputs needs a batch axis and one example at least, got shape "
                         f"{list(raw.shape)}")
    norm = _normalization_dict(normalization)
    if tokenizer is not None and (norm is not None or text is None or len(text) != len(raw)):
        raise ValueError("a text bundle needs one golden string per row of token ids and no "
                         "normalization")
    tok_block, tok_files = _tokenizer_block(tokenizer) if tokenizer is not None else (None, {})
    x = raw
    if norm is not None:
        mean, std = np.asarray(norm["mean"], "float32"), np.asarray(norm["std"], "float32")
        if x.shape[-1] != len(mean):
            raise ValueError(f"normalization has {len(mean)} values, golden inputs have last "
                             f"axis {x.shape[-1]}")
        x = ((x - mean) / std).astype("float32")
    overrides = dict(tolerances or {})

    files, expected, contents = {}, {}, {}
    for fmt, path in tflite_files.items():
        path = Path(path)
        content, entries, out = _run_batch1(path, x)
        bad = nonfinite_count(out)
        if bad:
            raise ValueError(f"{path.name} gives {bad} NaN/inf values on the {len(x)} golden "
                             "inputs: the model is broken, and a bundle ships finite numbers "
                             "only (see kdl.gates)")
        contents[path.name] = content
        tol = _tolerance(fmt, entries["outputs"], overrides)
        entry: dict[str, Any] = {
            "format": fmt, "size_bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(), **entries,
        }
        if reference_outputs is not None:
            ref = np.asarray(reference_outputs, "float32").reshape(out.shape)
            parity = {"max_abs_diff": float(np.max(np.abs(out - ref)))}
            if task == "classification" and ref.ndim == 2 and ref.shape[1] > 1:
                parity["top1_agreement"] = float(np.mean(out.argmax(1) == ref.argmax(1)))
            entry["parity_vs_reference"] = parity
        files[path.name] = entry
        expected[path.name] = {
            **tol,
            "outputs": [{"name": entries["outputs"][0]["signature_name"]
                         or entries["outputs"][0]["name"], **_json_array(out)}],
        }
        if task == "classification":
            expected[path.name]["top1"] = [int(i) for i in out.reshape(len(out), -1).argmax(1)]

    contract = {
        "schema": CONTRACT_SCHEMA,
        "model": {"name": model_name, "version": str(model_version), "source_run": source_run,
                  "task": task, **dict(metadata or {}),
                  "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "labels": [str(n) for n in label_names],
        "preprocessing": {**({"image": dict(image)} if image else {}), "normalization": norm,
                          **({"tokenizer": tok_block} if tok_block else {})},
        "how_to_run": {**HOW_TO, **({"tokenize": "input 0 = preprocessing.tokenizer applied to "
                                     "the string (its normalization steps in order, then "
                                     "start/end tokens, truncation, padding); golden.text "
                                     "holds the strings, golden inputs[0] their ids"}
                                     if tok_block else {})},
        "files": files,
        "golden": {"file": "golden.json", "examples": len(raw)},
    }
    golden: dict[str, Any] = {
        "schema": GOLDEN_SCHEMA,
        "inputs": [{"name": files[names[0]]["inputs"][0]["signature_name"]
                    or files[names[0]]["inputs"][0]["name"],
                    "stage": "token ids of golden.text (the tokenizer's output)" if tok_block
                    else "raw, before preprocessing", **_json_array(raw)}],
        "expected": expected,
    }
    if tok_block:
        golden["text"] = {"stage": "raw strings: text -> tokenizer -> inputs[0] -> outputs",
                          "strings": [str(t) for t in text]}
    if golden_images:
        golden["images"] = [{"name": f"image {i}", "stage": "decoded 8-bit pixels, before "
                             "resize", **_json_array(np.asarray(g))}
                            for i, g in enumerate(golden_images)]
    if reference_outputs is not None:
        golden["reference"] = {"source": "keras model on the normalized inputs",
                               **_json_array(reference_outputs)}

    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.tmp-", dir=bundle_dir.parent))
    try:
        tmp.chmod(0o755)
        for name, content in {**contents, **tok_files}.items():  # checked and hashed above
            (tmp / name).write_bytes(content)
        (tmp / "contract.json").write_text(json.dumps(contract, indent=1), encoding="utf-8")
        (tmp / "golden.json").write_text(json.dumps(golden), encoding="utf-8")
        replace_dir(tmp, bundle_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle_dir
