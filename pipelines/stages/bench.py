"""The bench stage: latency, throughput, size and memory of every exported file.

Needs a run directory with `model.keras` and a passed export (`export/report.json`).
Rows: the Keras `model(x)` call on this process's backend (the baseline), the
reloaded SavedModel, each `.tflite` in LiteRT at each of `bench.threads`, and
the `.onnx` file in onnxruntime. Writes `benchmark.md` and `benchmark.csv`
into the run directory, prints the table, logs `bench/<format>/<figure>`
metrics and the table (`mlflow.log_table`).
"""

from __future__ import annotations

import json
from typing import Any

from kdl.export import bench
from kdl.export.formats import FORMATS, RUNTIMES
from pipelines.stages.common import Context, load_keras

FIGURES = ("batch1_p50_ms", "batch1_p90_ms", "kernel_p50_ms", "kernel_vs_fp32",
           "throughput_per_s", "rss_delta_mb", "latency_vs_keras")
FILE_FIGURES = ("size_bytes", "gzip_bytes", "size_vs_fp32")


def _extra(r: dict[str, Any]) -> dict[str, Any]:
    """The export report's metric and parity figures for a format's rows."""
    extra = {"metric": r.get("value"), "max_abs_diff": r.get("max_abs_diff"),
             "top1_agreement": r.get("top1_agreement")}
    if r.get("metric_drop") is not None:
        extra["metric_delta"] = 0.0 - r["metric_drop"]  # no "-0"
    return {k: v for k, v in extra.items() if v is not None}


def runnables_for(run_dir, report: dict[str, Any], model, threads: list[int]):
    """The rows to measure, from the export report of `run_dir`."""
    export_dir = run_dir / "export"
    keras_path = export_dir / "model.keras"
    rows = [bench.keras_runnable(model, path=keras_path if keras_path.exists()
                                 else run_dir / "model.keras")]
    for fmt, r in report["formats"].items():
        path, extra = export_dir / r["file"], _extra(r)
        runtime = RUNTIMES[FORMATS[fmt].runtime]
        if runtime.bench is None:  # measured as the Keras baseline row
            rows[0].extra.update(extra)
            continue
        rows += [runtime.bench(path, fmt, t, extra) for t in (threads if runtime.threaded
                                                              else [None])]
    return rows


def metric_name(row: dict[str, Any], figure: str) -> str:
    suffix = f"_t{row['threads']}" if row["threads"] and figure in FIGURES else ""
    return f"bench/{row['format']}/{figure}{suffix}"


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    model_path = run_dir / "model.keras"
    report_path = run_dir / "export" / "report.json"
    if not model_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no model.keras: run the train stage first")
    if not report_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no export/report.json: run the export stage "
                                f"first (make export RUN={run_dir})")
    report = json.loads(report_path.read_text())
    splits = ctx.splits()
    model = load_keras(model_path, f"{run_dir} has no model.keras: run the train stage first")
    b = cfg.bench
    settings = bench.BenchSettings(min_reps=b.min_reps, budget_s=b.budget_s, batch=b.batch,
                                   throughput_budget_s=b.throughput_budget_s)
    rows = bench.benchmark(runnables_for(run_dir, report, model, list(b.threads)),
                           splits.test.x, settings, progress=print)
    targets = bench.targets(rows, num_params=model.count_params())
    md_path, csv_path = bench.write_results(
        rows, run_dir, title=f"Benchmark: {cfg.name} / {run_dir.name}", target_rows=targets,
        settings=settings)
    print(bench.markdown_table(rows))
    for t in targets:
        met = "n/a" if t.met is None else ("met" if t.met else "MISSED")
        value = "-" if t.value is None else f"{t.value:.3g}"
        print(f"target {t.name}: {value} (<= {t.limit:g}) {met} {t.note}")

    metrics: dict[str, float] = {}
    for row in rows:
        for figure in FIGURES + FILE_FIGURES + bench.EXTRA_COLUMNS:
            if row.get(figure) is not None:
                metrics[metric_name(row, figure)] = float(row[figure])
    tracker.log_metrics(metrics)
    tracker.log_metrics(metrics, run_id=tracker.parent_id)
    # The stage's own run only: MLflow appends to an existing table of the same name.
    tracker.log_table(rows, "bench/benchmark.json")
    tracker.log_artifact(md_path, "bench")
    tracker.log_artifact(csv_path, "bench")

    summary: dict[str, Any] = {"rows": len(rows)}
    keys = ("tflite_fp32_vs_keras_latency", "int8_vs_fp32_kernel_latency", "int8_vs_fp32_size")
    for t, key in zip(targets, keys, strict=True):
        if t.value is not None:
            summary[key] = t.value
    base = rows[0]
    summary["keras_p50_ms"] = base["batch1_p50_ms"]
    return summary
