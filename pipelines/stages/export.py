"""The export stage: every configured format, verified against the Keras model.

Reference outputs come from the Keras model on the backend the run trained on.
Conversion and verification run in a TensorFlow-backend process: this one if
it already is, else a subprocess with `KERAS_BACKEND=tensorflow`. Files are
written to a temporary directory that becomes `<run_dir>/export/` only when
every format passed its thresholds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kdl import training
from kdl.data import fingerprint, sample
from kdl.export import float32_model
from kdl.export.formats import FORMATS
from kdl.io import atomic_path, atomic_write_json
from pipelines import mobile, tf_process
from pipelines.stages.common import Context, StageFailed, conversion_failed, load_keras


def _run_worker(request: dict[str, Any], workdir: Path) -> dict[str, Any]:
    if keras.backend.backend() == "tensorflow":
        # Imported here: the worker module sets KERAS_BACKEND for its own process.
        from pipelines.export_worker import export_and_verify

        return export_and_verify(request)
    proc = tf_process.run_module("pipelines.export_worker", request, workdir)
    report_path = Path(request["out_dir"]) / "report.json"
    if not report_path.exists():
        raise RuntimeError(f"the TensorFlow export process failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(report_path.read_text())


def export_options(cfg) -> dict[str, dict[str, Any]]:
    """Per-format converter options from the config (flex ops, uint8 pixel input)."""
    options: dict[str, dict[str, Any]] = {
        f: {"allow_flex_ops": True} for f in cfg.export.formats
        if FORMATS[f].is_tflite and cfg.export.allow_flex_ops}
    if cfg.export.input_dtype != "int8" and "tflite_int8" in cfg.export.formats:
        options.setdefault("tflite_int8", {})["input_dtype"] = cfg.export.input_dtype
    return options


def failure_table(report: dict[str, Any]) -> str:
    lines = [f"  {fmt}: " + "; ".join(r["failures"])
             for fmt, r in report["formats"].items() if r.get("failures")]
    return "\n".join(lines)


# The model export ships: the most compressed Keras model the run has (the
# quantize stage's QAT model, else the prune stage's pruned one, else the trained one).
SOURCES = ("compressed/model_qat.keras", "compressed/model_pruned.keras", "model.keras")


def source_model(run_dir: Path) -> Path:
    if not (run_dir / "model.keras").is_file():
        raise FileNotFoundError(f"{run_dir} has no model.keras: run the train stage first "
                                "(or point RUN= at a finished run directory)")
    return next(run_dir / p for p in SOURCES if (run_dir / p).is_file())


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    model_path = source_model(run_dir)
    tracker.set_tags({"export_source": str(model_path.relative_to(run_dir))})
    splits = ctx.splits()
    model = float32_model(load_keras(model_path, f"{model_path} is missing"))
    reference = training.predict(model, splits.test.x)
    n_rep = min(cfg.export.representative_samples, len(splits.train))
    representative = sample(splits.train,
                            np.random.default_rng(0).permutation(len(splits.train))[:n_rep])

    workdir = Path(tempfile.mkdtemp(dir=run_dir, prefix=".export-work-"))
    try:
        np.savez(workdir / "inputs.npz", x=splits.test.x, y=splits.test.y,
                 reference=reference, representative=representative)
        with atomic_path(run_dir / "export") as out_dir:
            request = {
                "model": str(model_path), "inputs": str(workdir / "inputs.npz"),
                "out_dir": str(out_dir), "formats": list(cfg.export.formats),
                "task": splits.task, "thresholds": cfg.export.thresholds,
                "options": export_options(cfg),
            }
            report = _run_worker(request, workdir)
            report["representative"] = {"samples": n_rep,
                                        "fingerprint": fingerprint(representative)}
            _log(tracker, report)
            if "error" in report:
                raise conversion_failed(run_dir, "export", cfg.model.name,
                                                   report["error"], report.get("crash"))
            if not report["passed"]:
                atomic_write_json(run_dir / "export_report.failed.json", report)
                raise StageFailed("exported files do not match the Keras model:\n"
                                  + failure_table(report)
                                  + f"\n(full report: {run_dir / 'export_report.failed.json'})")
            atomic_write_json(out_dir / "report.json", report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ctx.state["export_dir"] = run_dir / "export"
    tracker.log_artifact(run_dir / "export" / "report.json", "export")
    summary: dict[str, Any] = {"source": str(model_path.relative_to(run_dir))}
    try:  # the mobile bundle: written, replayed by the standalone checker, registered
        text = (mobile.text_golden(splits, cfg.export.golden_examples,
                                   lambda ids: training.predict(model, ids))
                if "tokenizer" in splits.info else None)
        bundle = mobile.write_and_verify_bundle(ctx, splits, reference, report, text)
    except mobile.BundleVerificationError as e:
        raise StageFailed(str(e)) from None
    if bundle:
        summary.update(bundle_files=bundle["bundle_files"], bundle=str(bundle["bundle_dir"]))
        version = mobile.register_candidate(tracker, cfg, run_dir, bundle["bundle_dir"],
                                            mobile.bundle_formats(cfg, report))
        if version is not None:
            summary["candidate"] = version
    for fmt, r in report["formats"].items():
        summary[f"{fmt}_max_abs_diff"] = r["max_abs_diff"]
        summary[f"{fmt}_bytes"] = r["size_bytes"]
    return summary


def _log(tracker, report: dict[str, Any]) -> None:
    metrics = {}
    for fmt, r in report.get("formats", {}).items():
        for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement", "value", "metric_drop",
                    "size_bytes", "gzip_bytes"):
            if key in r:
                metrics[f"export/{fmt}/{key}"] = r[key]
        metrics[f"export/{fmt}/passed"] = float(r.get("passed", False))
    tracker.log_metrics(metrics)
    tracker.log_metrics(metrics, run_id=tracker.parent_id)
