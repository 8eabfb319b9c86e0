"""`python -m pipelines predict <bundle or run dir> <inputs...>`: the app's path in Python.

It reads the bundle's `contract.json` (validated completely first), prepares
each input the way the contract says, runs one `.tflite` file with LiteRT at
batch 1 (`run_like_an_app`: normalize, quantize, run, dequantize) and prints a
top-k table (or JSON). Only numpy, ai-edge-litert and, for images, Pillow are
imported: no Keras, no TensorFlow, no kdl.

The input kind comes from the contract: `preprocessing.image` -> image files
or folders of them (decoded by Pillow to 8-bit RGB, first frame, then
`verify_bundle.preprocess_image`); `preprocessing.tokenizer` -> strings
(`--text "..."`, repeatable, or `--lines FILE`: one text per line), tokenized by
the plain-Python reference tokenizer (`tokenizer_reference.py`) from the
contract and the bundle's vocabulary. A kind is one entry of `INPUT_KINDS`.

Exit status: 0 predictions printed; 2 bad input (not a bundle, a malformed
contract, unreadable or missing files: all of them named in one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.verify_bundle import (
    CONTRACT,
    MalformedBundleError,
    _interpreter,
    _load_json,
    check_tflite_bytes,
    preprocess_image,
    run_like_an_app,
    validate_contract,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class PredictError(Exception):
    """Bad input to predict: the message is the one line to print."""


def find_bundle(path: Path) -> Path:
    """A bundle directory, or a run directory holding `bundle/`."""
    for candidate in (path, path / "bundle"):
        if (candidate / CONTRACT).is_file():
            return candidate
    raise PredictError(f"{path} is not a bundle (no {CONTRACT}) nor a run directory with "
                       "bundle/: give <run dir> or <run dir>/bundle")


def choose_file(contract: dict, name: str | None) -> str:
    """The `.tflite` file to run: `name`, else the int8 one (what an app ships), else the
    first listed."""
    files = list(contract["files"])
    if name is not None:
        if name not in files:
            raise PredictError(f"--model {name!r} is not in the bundle; it holds "
                               f"{', '.join(files)}")
        return name
    int8 = [f for f in files if contract["files"][f].get("format") == "tflite_int8"]
    return (int8 or files)[0]


# ----------------------------------------------------------------------------- images


def _image_paths(items: list[str]) -> tuple[list[Path], list[str]]:
    paths, problems = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p} (a folder with no {'/'.join(IMAGE_SUFFIXES)} file)")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            problems.append(f"{p} (no such file)")
    return paths, problems


def decode_image(path: Path) -> np.ndarray:
    """8-bit RGB pixels `(h, w, 3)` of an image file (first frame), as an app decodes."""
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)
        return np.asarray(im.convert("RGB"), dtype="uint8")


def load_images(contract: dict, items: list[str], bundle: Path | None = None
                ) -> tuple[list[str], list[np.ndarray]]:
    """Every image named (files or folders), preprocessed; `PredictError` naming every
    unreadable one."""
    paths, problems = _image_paths(items)
    inputs, names = [], []
    for p in paths:
        try:
            pixels = decode_image(p)
        except Exception as e:  # noqa: BLE001  (Pillow raises several kinds)
            problems.append(f"{p} ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                            if str(e) else f"{p} ({type(e).__name__})")
            continue
        inputs.append(preprocess_image(pixels, contract["preprocessing"]["image"]))
        names.append(str(p))
    if problems:
        raise PredictError(f"cannot read {len(problems)} input(s): {'; '.join(problems)}")
    if not inputs:
        raise PredictError("no input images given")
    return names, inputs


# ----------------------------------------------------------------------------- text


def load_texts(contract: dict, items: list[str], bundle: Path | None = None
               ) -> tuple[list[str], list[np.ndarray]]:
    """Token ids of each string, by the reference tokenizer and the bundle's vocabulary."""
    from pipelines.verify_bundle import _reference_tokenizer

    if not items:
        raise PredictError("no input texts given: use --text \"...\" or --lines FILE")
    spec = contract["preprocessing"]["tokenizer"]
    supported, reference, _ = _reference_tokenizer()
    if spec["kind"] not in supported:
        raise PredictError(f"this bundle's tokenizer is {spec['kind']}; predict tokenizes "
                           f"{', '.join(supported)} (run the SentencePiece runtime in the app)")
    tok = reference.from_bundle(bundle, spec)
    return list(items), [np.asarray(tok.encode(t), "int32") for t in items]


def read_lines(path: Path) -> list[str]:
    """`--lines FILE`: one text per line (UTF-8), blank lines skipped."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PredictError(f"--lines {path}: cannot read it as UTF-8 text ({e})") from None
    return [line for line in content.splitlines() if line.strip()]


# Input kinds by the contract block that declares them: (block, loader, what to give).
INPUT_KINDS: dict[str, tuple[str, Callable, str]] = {
    "image": ("image", load_images, "image files or folders"),
    "text": ("tokenizer", load_texts, "--text strings or --lines FILE"),
}


def input_kind(contract: dict) -> str:
    pre = contract.get("preprocessing") or {}
    for kind, (block, _, _) in INPUT_KINDS.items():
        if pre.get(block):
            return kind
    raise PredictError("this bundle's contract declares no input kind predict knows "
                       f"({', '.join(INPUT_KINDS)}): it takes arrays; replay it with "
                       "verify-bundle")


# ----------------------------------------------------------------------------- predict


def predict(bundle: Path, items: list[str], *, top_k: int = 3, model: str | None = None,
            num_threads: int = 1) -> dict:
    """Top-k predictions of each input: `{"file", "model", "predictions": [...]}`."""
    bundle = find_bundle(bundle)
    try:
        contract = _load_json(bundle / CONTRACT)
        validate_contract(contract, bundle)
    except MalformedBundleError as e:
        raise PredictError(f"bundle {bundle} is malformed: {e}") from None
    kind = input_kind(contract)
    names, inputs = INPUT_KINDS[kind][1](contract, items, bundle)
    fname = choose_file(contract, model)
    entry = contract["files"][fname]
    try:
        interp = _interpreter(bundle / fname, check_tflite_bytes(bundle / fname), num_threads)
    except MalformedBundleError as e:
        raise PredictError(str(e)) from None
    labels = contract.get("labels") or []
    out = []
    for name, x in zip(names, inputs, strict=True):
        probs = run_like_an_app(interp, entry["inputs"], entry["outputs"], [x], contract)[0]
        order = np.argsort(-probs, kind="stable")[:top_k]
        out.append({"input": name, "top": [
            {"class": int(i), "label": labels[i] if i < len(labels) else str(i),
             "score": float(probs[i])} for i in order]})
    return {"bundle": str(bundle), "model": fname, "kind": kind, "predictions": out}


def table(result: dict) -> str:
    rows = [(p["input"], str(r + 1), t["label"], f"{t['score']:.4f}")
            for p in result["predictions"] for r, t in enumerate(p["top"])]
    head = ("input", "rank", "label", "score")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines) + f"\n({result['model']} in {result['bundle']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines predict",
        description="Predict with a mobile bundle (numpy + ai-edge-litert + Pillow only).")
    parser.add_argument("bundle", type=Path, help="a bundle directory or a run directory")
    parser.add_argument("inputs", nargs="*", help="image files or folders of images")
    parser.add_argument("--text", action="append", default=[],
                        help="a text to classify (text bundles; repeat for several)")
    parser.add_argument("--lines", type=Path, help="a UTF-8 file of texts, one per line")
    parser.add_argument("--top-k", type=int, default=3, help="classes per input (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", help="the .tflite file of the bundle to run (default: the "
                        "int8 one, else the first)")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.threads < 1:
        print("error: --top-k and --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        texts = args.text + (read_lines(args.lines) if args.lines else [])
        if texts and args.inputs:
            raise PredictError("give image files or texts (--text/--lines), not both")
        result = predict(args.bundle, texts or args.inputs, top_k=args.top_k,
                         model=args.model, num_threads=args.threads)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
