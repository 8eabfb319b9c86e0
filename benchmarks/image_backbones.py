"""Int8 vs fp32 per mobile backbone: op types in each .tflite file and LiteRT kernel latency
with the default delegate (XNNPACK) on and off.

    KERAS_BACKEND=tensorflow python -m benchmarks.image_backbones [--size 96] [--rounds 7]

Each backbone (weights none: latency does not depend on the values) is converted to
fp32 and to full int8 with uint8 input (calibrated on 64 images of the generated
`shapes` set). Timing: batch 1, 1 thread, `invoke()` only (the input is set once), in
interleaved rounds: every file and delegate setting once per round, a block of calls
each, timed one by one and summarised by the block's median (a call the OS preempted
does not move it). The table gives the median over rounds and the min-max spread;
int8/fp32 is taken per round (the two files timed back to back) and summarised by its
median and min-max over rounds. `off-fast-path ops` are the op types left outside the
XNNPACK delegate once it is applied: they run LiteRT's reference/optimized builtin
kernels. `--work DIR` keeps the converted files there and reuses them on the next run
(conversion is most of the time; timing is not).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BACKBONES = [  # (label, registry name, params)
    ("mobilenet_v2 a0.35", "mobilenet_v2", {"alpha": 0.35}),
    ("mobilenet_v2 a0.5", "mobilenet_v2", {"alpha": 0.5}),
    ("mobilenet_v2 a1.0", "mobilenet_v2", {"alpha": 1.0}),
    ("mobilenet_v3_small", "mobilenet_v3_small", {"alpha": 1.0}),
    ("mobilenet_v3_small minimalistic", "mobilenet_v3_small",
     {"alpha": 1.0, "minimalistic": True}),
    ("mobilenet_v3_large minimalistic", "mobilenet_v3_large",
     {"alpha": 1.0, "minimalistic": True}),
    ("efficientnet_b0", "efficientnet_b0", {}),
]


def interpreter(path: Path, delegate: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = (OpResolverType.AUTO if delegate
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp = Interpreter(model_path=str(path), num_threads=1,
                         experimental_op_resolver_type=kind)
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, d["shape"]).astype(d["dtype"])
    interp.set_tensor(d["index"], x)
    return interp


def op_types(interp) -> collections.Counter:
    return collections.Counter(op["op_name"] for op in interp._get_ops_details())


def off_fast_path(interp) -> collections.Counter:
    """Op types the interpreter itself runs once the delegate is applied.

    `_get_ops_details()` lists every node of the graph, the ones a delegate replaced
    included, and then the delegate nodes. What runs is found backwards from the model's
    outputs: a tensor a delegate node produces comes from that node, any other from its
    original op; constants end the walk.
    """
    ops = interp._get_ops_details()
    producer = {}
    for op in ops:  # delegate nodes come last, so their outputs override the originals'
        for t in op["outputs"]:
            producer[int(t)] = op
    needed = [d["index"] for d in interp.get_output_details()]
    run, seen = collections.Counter(), set()
    while needed:
        op = producer.get(int(needed.pop()))
        if op is None or op["index"] in seen:
            continue
        seen.add(op["index"])
        if op["op_name"] != "DELEGATE":
            run[op["op_name"]] += 1
        needed.extend(int(t) for t in op["inputs"] if t >= 0)
    return run


def time_block(interp, calls: int) -> float:
    """The median of `calls` single invokes (ms): a call the OS preempted does not move it."""
    interp.invoke()
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        interp.invoke()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def convert(name: str, params: dict, size: int, rep: np.ndarray, out: Path) -> dict:
    from kdl.export import export
    from kdl.models import build_model

    model = build_model(name, (size, size, 3), 5, preset="default",
                        **{"dropout": 0.0, **params})
    paths = export(model, out, ["tflite_fp32", "tflite_int8"],
                   {"tflite_int8": {"representative": rep, "input_dtype": "uint8"}})
    return {"params": model.count_params(), **{k: Path(v) for k, v in paths.items()}}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    p.add_argument("--work", type=Path, help="keep converted files here and reuse them")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/image_backbones.json"))
    args = p.parse_args()

    from kdl.data import load_splits

    data = load_splits("shapes", image_size=(args.size, args.size), normalize=False,
                       per_class=40)
    rep = data.train.subset(np.arange(64)).x
    work = args.work or Path(tempfile.mkdtemp(prefix="kdl-backbones-"))
    if not args.work:  # converted files kept only where --work asks
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    rows = []
    chosen = [b for b in BACKBONES if not args.only or b[0] in args.only]
    files = {}
    for label, name, params in chosen:
        out = work / f"{label.replace(' ', '_')}_{args.size}"
        index = out / "files.json"
        if index.exists():
            files[label] = {k: (v if k == "params" else Path(v))
                            for k, v in json.loads(index.read_text()).items()}
            print(f"reused {label} from {out}", flush=True)
            continue
        files[label] = convert(name, params, args.size, rep, out)
        index.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                     for k, v in files[label].items()}))
        print(f"converted {label}: {files[label]['params']} params", flush=True)
    interps = {(label, fmt, dg): interpreter(files[label][fmt], dg)  # pairs back to back
               for label in files for dg in (True, False)
               for fmt in ("tflite_fp32", "tflite_int8")}
    times = collections.defaultdict(list)
    for r in range(args.rounds):  # interleaved: each round times every configuration once
        for key, interp in interps.items():
            times[key].append(time_block(interp, args.calls))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for label in files:
        row = {"backbone": label, "params": files[label]["params"]}
        for fmt in ("tflite_fp32", "tflite_int8"):
            row[f"{fmt}_bytes"] = files[label][fmt].stat().st_size
            for dg in (True, False):
                ts = times[(label, fmt, dg)]
                tag = f"{fmt}_{'xnnpack' if dg else 'builtin'}"
                row[f"{tag}_ms"] = statistics.median(ts)
                row[f"{tag}_spread_ms"] = [min(ts), max(ts)]
            row[f"{fmt}_ops"] = dict(op_types(interps[(label, fmt, False)]))
            row[f"{fmt}_off_fast_path"] = dict(off_fast_path(interps[(label, fmt, True)]))
        for dg, on in (("xnnpack", True), ("builtin", False)):
            # Paired per round (the two files were timed back to back), so load that
            # changes between rounds cancels; median and min-max over rounds.
            ratios = [i / f for i, f in zip(times[(label, "tflite_int8", on)],
                                            times[(label, "tflite_fp32", on)], strict=True)]
            row[f"int8_vs_fp32_{dg}"] = statistics.median(ratios)
            row[f"int8_vs_fp32_{dg}_spread"] = [min(ratios), max(ratios)]
        row["int8_vs_fp32_size"] = row["tflite_int8_bytes"] / row["tflite_fp32_bytes"]
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "rounds": args.rounds,
                                    "calls": args.calls, "rows": rows}, indent=1))
    print(f"\n{args.size}x{args.size}, batch 1, 1 thread, invoke() only; median of "
          f"{args.rounds} interleaved rounds (each the median of {args.calls} calls) "
          "[min-max]; int8/fp32: the median of per-round ratios [min-max]\n")
    print("| backbone | params | fp32 ms (XNNPACK) | int8 ms (XNNPACK) | int8/fp32 | "
          "fp32 ms (no delegate) | int8 ms (no delegate) | int8/fp32 | int8/fp32 size | "
          "int8 ops off XNNPACK |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def cell(r, tag):
        lo, hi = r[f"{tag}_spread_ms"]
        return f"{r[f'{tag}_ms']:.2f} [{lo:.2f}-{hi:.2f}]"

    def ratio(r, dg):
        lo, hi = r[f"int8_vs_fp32_{dg}_spread"]
        return f"{r[f'int8_vs_fp32_{dg}']:.2f} [{lo:.2f}-{hi:.2f}]"

    for r in rows:
        off = ", ".join(f"{k} x{v}" for k, v in sorted(r["tflite_int8_off_fast_path"].items()))
        print(f"| {r['backbone']} | {r['params']:,} | {cell(r, 'tflite_fp32_xnnpack')} | "
              f"{cell(r, 'tflite_int8_xnnpack')} | {ratio(r, 'xnnpack')} | "
              f"{cell(r, 'tflite_fp32_builtin')} | {cell(r, 'tflite_int8_builtin')} | "
              f"{ratio(r, 'builtin')} | {r['int8_vs_fp32_size']:.2f} | {off or 'none'} |")
    print("\nop types per int8 file:")
    for r in rows:
        print(f"  {r['backbone']}: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(r["tflite_int8_ops"].items())))


if __name__ == "__main__":
    main()
