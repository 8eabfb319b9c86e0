"""Why the full-int8 text transformer is slower than fp32 in LiteRT: where the time goes.

    KERAS_BACKEND=tensorflow python -m benchmarks.text_int8 [--model RUN/model.keras]
        [--rounds 9] [--calls 50]

The model is the `reviews_transformer` recipe's (kdl's transformer_classifier, default
preset, vocabulary 2,000, 32 ids, 3 classes): a trained `model.keras` when given, else
the same architecture with its initial weights (latency does not depend on the values).
Calibration: 200 rows of random ids with a random length each (right padding, id 0).

Files compared (each fp32 and full int8, converted by `kdl.export`):
  - `full`: the whole model, dynamic batch (what the export stage ships);
  - `full b1`: the same model converted from a batch-1 signature (static shapes);
  - sub-models of the same graph (its own layers) cut after the embedding (`embed`), then
    inside the first encoder block after its first LayerNorm (`+norm1`), the attention
    and its residual (`+attention`), the second LayerNorm (`+norm2`) and the MLP with its
    residual (`+mlp (enc0)`, the whole first block), then after the second block
    (`enc1`): the cost of a part is the difference between consecutive cuts;
  - `int8, float ops`: the full model in int8 except the ops XNNPACK does not take in
    int8 (`FLOAT_OPS`), left float by TFLite's selective quantization (its fp32 column
    is the `full` fp32 file).
Timing: batch 1, `invoke()` only (the input set once), 1 thread, XNNPACK (LiteRT's
default delegate) on and off, in interleaved rounds (every file and setting once per
round, a block of calls each), so machine load spreads over all alike; the table gives
the median over rounds with the min-max spread, and the int8/fp32 ratio per round
(median [min-max]). `ops outside XNNPACK`: the nodes the interpreter itself runs once the
delegate is applied, walked back from the model's outputs through the DELEGATE nodes
(LiteRT keeps the replaced nodes in its node list, so counting node types alone would
count them twice).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import tempfile
from pathlib import Path

import numpy as np

# time_block: a block of invoke() calls, ms each; off_fast_path: the op types the
# interpreter itself runs once XNNPACK is applied
from benchmarks.image_backbones import off_fast_path, time_block

SEQ, VOCAB, CLASSES = 32, 2000, 3


def interpreter(path: Path, delegate: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=str(path), num_threads=1,
                         experimental_op_resolver_type=kind)
    d = interp.get_input_details()[0]
    if d["shape_signature"][0] == -1:
        interp.resize_tensor_input(d["index"], [1, *d["shape"][1:]])
    interp.allocate_tensors()
    ids = np.zeros((1, SEQ), "int32")
    ids[0, :12] = np.arange(5, 17)
    interp.set_tensor(d["index"], ids)
    return interp


def build(model_path: Path | None):
    import keras

    from kdl.models import build_model

    if model_path:
        return keras.saving.load_model(model_path)
    return build_model("transformer_classifier", (SEQ,), CLASSES, preset="default",
                       vocab_size=VOCAB)


def cuts(model) -> dict:
    """The model cut after each part of the first encoder block, and after each block."""
    import keras

    x = model.get_layer("embedding_dropout").output
    mask = keras.ops.expand_dims(model.get_layer("source_padding_mask").output, (1, 2))
    block = model.get_layer("encoder_0")
    out = {"embed": x}
    h = block.norm1(x)
    out["+norm1"] = h
    x = keras.layers.Add()([x, block.attention(h, h, attention_mask=mask)])
    out["+attention"] = x
    h = block.norm2(x)
    out["+norm2"] = h
    out["+mlp (enc0)"] = keras.layers.Add()([x, block.mlp_out(block.mlp_in(h))])
    out["enc1"] = model.get_layer("encoder_1").output
    models = {name: keras.Model(model.inputs, y, name=re.sub(r"\W+", "_", name).strip("_"))
              for name, y in out.items()}
    return {**models, "full": model}


# the int8 compute ops that XNNPACK leaves to LiteRT's builtin kernels (seen in `full`)
FLOAT_OPS = ["BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT", "SQUARED_DIFFERENCE"]


def convert_mixed(model, rep: np.ndarray, out: Path) -> Path:
    """Int8 except `FLOAT_OPS`, which stay float (quantize/dequantize around them):
    TFLite's selective quantization (QuantizationDebugger's op denylist)."""
    import tensorflow as tf

    saved = out.parent / "saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def data():
        return ([rep[i:i + 1]] for i in range(len(rep)))

    conv.representative_dataset = data
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=data,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=FLOAT_OPS))
    out.write_bytes(debugger.get_nondebug_quantized_model())
    return out


def convert(models: dict, rep: np.ndarray, work: Path) -> dict:
    from kdl.export import export
    from kdl.export.formats import _convert_tflite, _static_batch_saved_model

    files = {}
    for name, m in models.items():
        paths = export(m, work / m.name, ["tflite_fp32", "tflite_int8"],
                       {"tflite_int8": {"representative": rep}})
        files[(name, "fp32")], files[(name, "int8")] = (Path(paths["tflite_fp32"]),
                                                        Path(paths["tflite_int8"]))
    static = _static_batch_saved_model(models["full"], work / "b1" / "saved_model")
    for fmt, job in (("fp32", {}), ("int8", {"representative": rep})):
        path = work / "b1" / f"model_{fmt}.tflite"
        _convert_tflite(static, path, f"tflite_{fmt}", job)
        files[("full b1", fmt)] = path
    (work / "mixed").mkdir()
    files[("int8, float ops", "int8")] = convert_mixed(models["full"], rep,
                                                       work / "mixed" / "model.tflite")
    files[("int8, float ops", "fp32")] = files[("full", "fp32")]
    return files


def files_order(files: dict) -> list[str]:
    return list(dict.fromkeys(name for name, _ in files))


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, help="a trained model.keras (default: initial weights)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/text_int8.json"))
    p.add_argument("--work", type=Path, help="keep the converted files here; a later run "
                   "with the same --work times them again without converting")
    args = p.parse_args()

    model = build(args.model)
    vocab = model.get_layer("source_embedding").input_dim
    rng = np.random.default_rng(0)
    rep = np.zeros((200, SEQ), "int32")
    for row, n in zip(rep, rng.integers(4, SEQ + 1, 200), strict=True):
        row[:n] = rng.integers(5, vocab, n)
    work = args.work or Path(tempfile.mkdtemp(prefix="kdl-text-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    index = work / "files.json"
    if index.is_file():
        files = {tuple(k.split("|")): Path(v) for k, v in json.loads(index.read_text()).items()}
    else:
        files = convert(cuts(model), rep, work)
        index.write_text(json.dumps({"|".join(k): str(v) for k, v in files.items()}))
    interps = {(*key, dg): interpreter(path, dg) for key, path in files.items()
               for dg in (True, False)}
    times = collections.defaultdict(list)
    for r in range(args.rounds):
        for key, interp in interps.items():
            times[key].append(time_block(interp, args.calls))
        print(f"round {r + 1}/{args.rounds}", flush=True)

    rows = []
    for name in files_order(files):
        for dg in (True, False):
            f32, i8 = times[(name, "fp32", dg)], times[(name, "int8", dg)]
            ratios = [b / a for a, b in zip(f32, i8, strict=True)]
            rows.append({
                "file": name, "xnnpack": dg,
                "fp32_ms": statistics.median(f32), "fp32_spread": [min(f32), max(f32)],
                "int8_ms": statistics.median(i8), "int8_spread": [min(i8), max(i8)],
                "ratio": statistics.median(ratios), "ratio_spread": [min(ratios), max(ratios)],
                "fp32_off": dict(off_fast_path(interps[(name, "fp32", True)])),
                "int8_off": dict(off_fast_path(interps[(name, "int8", True)])),
                "nodes": len([o for o in interps[(name, "int8", False)]._get_ops_details()]),
                "fp32_bytes": files[(name, "fp32")].stat().st_size,
                "int8_bytes": files[(name, "int8")].stat().st_size})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "calls": args.calls,
                                    "model": str(args.model or "initial weights"),
                                    "rows": rows}, indent=1))

    def cell(r, k):
        lo, hi = r[f"{k}_spread"]
        return f"{r[f'{k}_ms' if k != 'ratio' else k]:.3f} [{lo:.3f}-{hi:.3f}]"

    print(f"\nbatch 1, 1 thread, invoke() only; median of {args.rounds} interleaved rounds "
          f"of {args.calls} calls [min-max]\n")
    print("| file | XNNPACK | fp32 ms | int8 ms | int8/fp32 | nodes | int8 ops outside "
          "XNNPACK | fp32 ops outside XNNPACK |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        off8 = ", ".join(f"{k} x{v}" for k, v in sorted(r["int8_off"].items())) or "none"
        off32 = ", ".join(f"{k} x{v}" for k, v in sorted(r["fp32_off"].items())) or "none"
        print(f"| {r['file']} | {'on' if r['xnnpack'] else 'off'} | {cell(r, 'fp32')} | "
              f"{cell(r, 'int8')} | {cell(r, 'ratio')} | {r['nodes']} | "
              f"{off8 if r['xnnpack'] else ''} | {off32 if r['xnnpack'] else ''} |")


if __name__ == "__main__":
    main()
