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

Exit status: 0 every file passes; 1 a golden vector does not reproduce (the
report says which file, example and output, by how much); 2 the bundle is
malformed (missing or unreadable file, bad JSON, contract that does not match
the model file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

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
# Reading the bundle


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise MalformedBundleError(f"{path}: missing. A bundle holds {CONTRACT} and {GOLDEN}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedBundleError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise MalformedBundleError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def _require(d: dict, key: str, where: str, kind: type | tuple[type, ...]):
    if key not in d:
        raise MalformedBundleError(f"{where}: missing key {key!r}.")
    if not isinstance(d[key], kind):
        raise MalformedBundleError(
            f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, "
            f"got {type(d[key]).__name__}."
        )
    return d[key]


def load_bundle(bundle_dir: Path) -> tuple[dict, dict]:
    """Reads and structurally checks `contract.json` and `golden.json`.

    Raises:
        MalformedBundleError: naming the file and the missing or wrong key.
    """
    if not bundle_dir.is_dir():
        raise MalformedBundleError(f"{bundle_dir}: not a directory.")
    contract = _load_json(bundle_dir / CONTRACT)
    if contract.get("schema") != CONTRACT_SCHEMA:
        raise MalformedBundleError(
            f"{bundle_dir / CONTRACT}: schema is {contract.get('schema')!r}, "
            f"this checker reads {CONTRACT_SCHEMA!r}."
        )
    files = _require(contract, "files", CONTRACT, dict)
    if not files:
        raise MalformedBundleError(f"{bundle_dir / CONTRACT}: 'files' lists no model file.")
    for fname, entry in files.items():
        where = f"{CONTRACT} files[{fname!r}]"
        if not isinstance(entry, dict):
            raise MalformedBundleError(f"{where}: expected an object.")
        for side in ("inputs", "outputs"):
            tensors = _require(entry, side, where, list)
            for i, t in enumerate(tensors):
                for key, kind in (("shape", list), ("dtype", str)):
                    _require(t, key, f"{where}.{side}[{i}]", kind)
    prep = contract.get("preprocessing") or {}
    norm = prep.get("normalization")
    if norm is not None:
        mean = _require(norm, "mean", f"{CONTRACT} preprocessing.normalization", list)
        std = _require(norm, "std", f"{CONTRACT} preprocessing.normalization", list)
        if len(mean) != len(std) or not all(float(s) != 0.0 for s in std):
            raise MalformedBundleError(
                f"{CONTRACT} preprocessing.normalization: mean and std need the same length "
                "and std no zero entry."
            )

    golden = _load_json(bundle_dir / GOLDEN)
    if golden.get("schema") != GOLDEN_SCHEMA:
        raise MalformedBundleError(
            f"{bundle_dir / GOLDEN}: schema is {golden.get('schema')!r}, "
            f"this checker reads {GOLDEN_SCHEMA!r}."
        )
    inputs = _require(golden, "inputs", GOLDEN, list)
    if not inputs:
        raise MalformedBundleError(f"{GOLDEN}: 'inputs' is empty.")
    expected = _require(golden, "expected", GOLDEN, dict)
    for fname in files:
        if fname not in expected:
            raise MalformedBundleError(
                f"{GOLDEN}: no expected outputs for {fname!r} (the contract lists it)."
            )
        entry = expected[fname]
        where = f"{GOLDEN} expected[{fname!r}]"
        _require(entry, "outputs", where, list)
        _require(entry, "atol", where, (int, float))
        _require(entry, "rtol", where, (int, float))
    return contract, golden


def _array(entry: dict, where: str) -> np.ndarray:
    data = _require(entry, "data", where, list)
    shape = _require(entry, "shape", where, list)
    try:
        arr = np.asarray(data, dtype="float64")
    except (TypeError, ValueError) as e:
        raise MalformedBundleError(f"{where}: data is not a numeric array ({e}).") from None
    if list(arr.shape) != [int(s) for s in shape]:
        raise MalformedBundleError(f"{where}: data has shape {list(arr.shape)}, says {shape}.")
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


def _interpreter(path: Path, content: bytes, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    try:
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
        if np.issubdtype(np.dtype(d["dtype"]), np.integer):
            if q is None or not np.isclose(q[0], scale, rtol=1e-6, atol=0) or q[1] != zp:
                raise MalformedBundleError(
                    f"{where} is quantized with scale={scale}, zero_point={zp} in the model; "
                    f"the contract says {t.get('quantization')}."
                )


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
        if np.issubdtype(np.dtype(t["dtype"]), np.integer):
            x = quantize(x, q[0], q[1], t["dtype"])
        else:
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
    if entry.get("sha256") and entry["sha256"] != _sha256(content):
        raise MalformedBundleError(
            f"{path}: sha256 differs from the contract's; the file changed after the bundle "
            "was written. Re-export the bundle."
        )
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
            worst = max(worst, float(diff.max(initial=0.0)))
            bad = diff > atol + rtol * np.abs(e)
            if bad.any():
                j = int(np.argmax(diff - (atol + rtol * np.abs(e))))
                mismatches.append(
                    f"example {i}, output {name!r}: {int(bad.sum())} of {bad.size} values off; "
                    f"worst at flat index {j}: got {g.ravel()[j]:.6g}, expected "
                    f"{e.ravel()[j]:.6g} (|diff| {diff.ravel()[j]:.3g} > "
                    f"atol {atol:g} + rtol {rtol:g} * |expected|)"
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
        MalformedBundleError: the tokenizer block, its files or golden.text are unusable.
    """
    spec = (contract.get("preprocessing") or {}).get("tokenizer")
    if spec is None:
        return [], ""
    where = f"{CONTRACT} preprocessing.tokenizer"
    kind = _require(spec, "kind", where, str)
    for key in ("sequence_length", "pad_id"):
        _require(spec, key, where, int)
    _require(spec, "normalization", where, list)
    for fname, digest in (spec.get("file_sha256") or {}).items():
        path = bundle_dir / fname
        if Path(fname).name != fname or not path.is_file():
            raise MalformedBundleError(f"{where}: file {fname!r} is not in the bundle.")
        if _sha256(path.read_bytes()) != digest:
            raise MalformedBundleError(f"{path}: sha256 differs from the contract's.")
    text = _require(golden, "text", GOLDEN, dict)
    strings = _require(text, "strings", f"{GOLDEN} text", list)
    ids = _array(golden["inputs"][0], f"{GOLDEN} inputs[0]")
    if len(strings) != len(ids) or not all(isinstance(t, str) for t in strings):
        raise MalformedBundleError(f"{GOLDEN}: text.strings needs one string per golden input "
                                   f"({len(strings)} strings, {len(ids)} inputs).")
    supported, reference, read_vocabulary = _reference_tokenizer()
    if kind not in supported:
        return [], (f"tokenizer {kind}: strings not replayed (the reference tokenizer "
                    f"implements {', '.join(supported)}); ids -> outputs checked")
    vocab = []
    if spec.get("vocabulary_file"):
        vocab = read_vocabulary(bundle_dir / _require(spec, "vocabulary_file", where, str))
    tok = reference(spec, vocab)
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
        `(exit_code, report_lines)`, exit code 0 (pass), 1 (mismatch) or 2 (malformed).
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
    for fname in contract["files"]:
        try:
            mismatches, s = verify_file(bundle_dir, fname, contract, golden, num_threads)
        except MalformedBundleError as e:
            code = EXIT_MALFORMED
            lines.append(f"MALFORMED {fname}: {e}")
            continue
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
    """Command line entry point; returns the exit status (0 pass, 1 mismatch, 2 malformed)."""
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
    for line in lines:
        if not args.quiet or not line.startswith("PASS"):
            print(line, file=sys.stdout if code == EXIT_OK else sys.stderr)
    verdict = {EXIT_OK: "bundle OK", EXIT_MISMATCH: "bundle FAILED: golden vectors do not "
               "reproduce", EXIT_MALFORMED: "bundle MALFORMED"}[code]
    print(f"{verdict}: {args.bundle_dir}", file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
