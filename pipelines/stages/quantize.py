"""The quantize stage: QAT (optional), TFLite fp32/int8 variants, and the compression report.

Input: `<run_dir>/model.keras` (dense baseline) and, after the prune stage,
`<run_dir>/compressed/model_pruned.keras`. The model to quantize is the pruned
one if present, else the baseline. Written to `<run_dir>/compressed/`:
`model_qat.keras` (QAT weights on their int8 grid), one `.tflite` per variant,
`report.json`, and the table printed at the end:

    variant, params, non-zero params, sparsity, .keras/.tflite size raw and
    gzipped, test metric and its delta (points) to the dense Keras model.

The representative dataset (calibration) is drawn from the training split; its
size and fingerprint are recorded. TFLite conversion runs in a TensorFlow
process (`python -m pipelines.stages.quantize <request.json>` when this run
uses JAX or PyTorch).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kdl import training
from kdl.compress import MagnitudePruner
from kdl.compress.ptq import keras_quantizable_layers, keras_quantize
from kdl.compress.qat import quantize_aware, strip_quantization
from kdl.compress.report import count_params, table
from kdl.data import fingerprint, sample
from kdl.export import LiteRTRunner, export
from kdl.export.formats import ExportError, last_words
from kdl.gates import at_least, at_most, nonfinite_count
from kdl.io import atomic_write_json, atomic_write_text, file_sizes
from pipelines import tf_process
from pipelines.stages.common import (
    Context,
    compile_model,
    conversion_failed,
    fit_data,
    load_keras,
    load_trained,
    save_model,
)

FORMAT_SUFFIX = {"tflite_fp32": "fp32", "tflite_int8": "int8"}


# ----------------------------------------------------------------------------- TF process


def convert_and_score(request: dict[str, Any]) -> dict[str, Any]:
    """In a TensorFlow-backend process: convert each job's model, run it with LiteRT.

    Returns:
        `{"scores": {variant: metrics}}`, plus `error` (and `crash`, the
        converter's `ConverterCrash.details`) when a conversion failed.
    """
    data = np.load(request["inputs"])
    x, y, rep = data["x"], data["y"], data["representative"]
    results = {}
    for job in request["jobs"]:
        model = keras.saving.load_model(job["keras"])
        options = {}
        if job["format"] == "tflite_int8":
            options = {"tflite_int8": {"representative": rep,
                                       "float_io": request.get("float_io", False)}}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = export(model, Path(tmp), [job["format"]], options)[job["format"]]
            except ExportError as e:
                return {"scores": results, "error": f"{job['name']}: {e}",
                        "crash": getattr(e, "details", None)}
            shutil.copyfile(path, job["out"] + ".tmp")
        os.replace(job["out"] + ".tmp", job["out"])
        pred = LiteRTRunner(job["out"]).predict(x)
        results[job["name"]] = _score(request["task"], y, pred)
    return {"scores": results}


def _score(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Task metrics of a file's outputs; every metric is NaN when an output is NaN/inf
    (an accuracy from the argmax of NaN rows would be a number, and pass a target)."""
    scores = training.score(task, y, pred)
    bad = nonfinite_count(pred)
    if bad:
        scores = {k: float("nan") for k in scores}
    return {**scores, "nonfinite_outputs": bad}


def _convert(request: dict[str, Any], workdir: Path, ctx) -> dict[str, Any]:
    if keras.backend.backend() == "tensorflow":
        result = convert_and_score(request)
    else:
        proc = tf_process.run_module("pipelines.stages.quantize", request, workdir)
        out = workdir / "result.json"
        if proc.returncode != 0 or not out.exists():
            raise conversion_failed(
                ctx.run_dir / "compressed", "quantize", ctx.cfg.model.name,
                f"the TensorFlow conversion process died (exit {proc.returncode})",
                {"returncode": proc.returncode, "last_words": last_words(proc.stderr)})
        result = json.loads(out.read_text())
    if result.get("error"):
        raise conversion_failed(ctx.run_dir / "compressed", "quantize", ctx.cfg.model.name,
                                result["error"], result.get("crash"))
    return result["scores"]


# ----------------------------------------------------------------------------- stage


def _qat_native(cfg, model, splits, out: Path, pruned: bool) -> keras.Model:
    qat = quantize_aware(model)
    compile_model(qat, splits.task, cfg.quantize.learning_rate)
    callbacks = [MagnitudePruner.keep_zeros(qat).callback()] if pruned else []
    keras.utils.set_random_seed(cfg.train.seed)
    qat.fit(**fit_data(cfg, splits), epochs=cfg.quantize.epochs, verbose=0,
            callbacks=callbacks)
    # No batch-norm recalibration: QAT folds each BN with its statistics frozen, and the
    # kernels were fine-tuned against those statistics.
    stripped = strip_quantization(qat, model)
    save_model(stripped, out)
    return stripped


def _keras_quantized(model_path: Path, mode: str, splits, out: Path) -> dict[str, Any]:
    model = load_keras(model_path, f"{model_path} is missing")
    if not keras_quantizable_layers(model):
        return {"note": f"Keras model.quantize({mode!r}) skipped: the model has no Dense, "
                        "EinsumDense or Embedding layer (Keras does not quantize Conv layers)"}
    covered = keras_quantize(model, mode)
    save_model(model, out)
    return {"model": model, "covered": covered,
            "note": f"Keras {mode}: quantized {', '.join(covered)}; Conv layers stay float, and "
                    "Keras-quantized models serve from Keras/SavedModel, not TFLite"}


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    q = cfg.quantize
    splits = ctx.splits()
    dense_path = ctx.state.get("model_path") or run_dir / "model.keras"
    dense = load_trained(ctx)
    comp = run_dir / "compressed"
    comp.mkdir(exist_ok=True)
    pruned_path = ctx.state.get("pruned_model_path") or comp / "model_pruned.keras"
    pruned = pruned_path.is_file()
    source_path = pruned_path if pruned else dense_path
    source = load_keras(source_path, f"{source_path} is missing")

    n_rep = min(q.representative_samples, len(splits.train))
    rep = sample(splits.train, np.random.default_rng(0).permutation(len(splits.train))[:n_rep])
    expected = tuple(dense.inputs[0].shape[1:])
    if tuple(rep.shape[1:]) != expected:
        raise ValueError(f"representative dataset has examples of shape {tuple(rep.shape[1:])}"
                         f" but the model takes {expected}")
    rep_info = {"samples": int(n_rep), "fingerprint": fingerprint(rep)}

    metric, mode = training.primary_metric(splits.task)
    keras_score = {"dense": training.evaluate(dense, splits.test, splits.task)[metric]}
    prefix = "pruned" if pruned else "dense"
    variants: list[dict[str, Any]] = [
        {"variant": "dense fp32", "keras": dense_path, "format": "tflite_fp32",
         "model": dense, "file": "dense_fp32.tflite"},
        {"variant": "dense int8 (PTQ)", "format": "tflite_int8", "keras": dense_path,
         "file": "dense_int8.tflite", "model": dense, "no_keras_size": True},
    ]
    if pruned:
        variants += [
            {"variant": "pruned fp32", "keras": pruned_path, "format": "tflite_fp32",
             "model": source, "file": "pruned_fp32.tflite"},
            {"variant": "pruned int8 (PTQ)", "keras": pruned_path, "format": "tflite_int8",
             "model": source, "file": "pruned_int8.tflite", "no_keras_size": True},
        ]
    notes = []
    if q.qat and q.epochs > 0:
        qat_keras = comp / "model_qat.keras"
        name = f"{prefix} int8 (QAT)"
        if q.engine == "native":
            stripped = _qat_native(cfg, source, splits, qat_keras, pruned)
            variants.append({"variant": name, "keras": qat_keras, "format": "tflite_int8",
                             "model": stripped, "file": f"{prefix}_qat_int8.tflite"})
        else:
            from kdl.compress.tfmot_engine import tfmot_quantize

            path = tfmot_quantize(source, splits.train.x, splits.train.y, rep,
                                  comp / f"{prefix}_qat_int8.tflite", epochs=q.epochs,
                                  batch_size=cfg.data.batch_size,
                                  learning_rate=q.learning_rate, float_io=q.float_io,
                                  preserve_sparsity=pruned, seed=cfg.train.seed)
            variants.append({"variant": name + " tfmot", "model": source, "tflite": path,
                             "no_keras_size": True})
            if pruned:
                notes.append("tfmot QAT ran prune-preserving (Default8BitPrunePreserveQuantize"
                             "Scheme): the pruned zeros stay zero in the .tflite")

    workdir = Path(tempfile.mkdtemp(dir=run_dir, prefix=".quantize-work-"))
    try:
        np.savez(workdir / "inputs.npz", x=splits.test.x, y=splits.test.y, representative=rep)
        jobs = [{"name": v["variant"], "keras": str(v["keras"]), "format": v["format"],
                 "out": str(comp / v["file"])} for v in variants if "format" in v]
        scores = _convert({"inputs": str(workdir / "inputs.npz"), "jobs": jobs,
                           "task": splits.task, "float_io": q.float_io}, workdir, ctx)
        for v in variants:
            if "tflite" in v:  # converted by tfmot: score it here via a LiteRT job
                scores[v["variant"]] = _convert_score_file(v["tflite"], splits, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    for name, sc in scores.items():
        if sc.get("nonfinite_outputs"):
            notes.append(f"{name}: {sc['nonfinite_outputs']} test outputs are NaN/inf, so its "
                         "metric is NaN and every target on it is NOT met")
    base = keras_score["dense"]
    rows = [{"variant": "dense keras (baseline)", **count_params(dense),
             **_keras_sizes(dense_path), "accuracy": base, "delta_pt": 0.0}]
    for v in variants:
        tfl = Path(v.get("tflite") or comp / v["file"])
        sizes = file_sizes(tfl)
        row = {"variant": v["variant"], **count_params(v["model"]),
               "tflite_kb": sizes.size_bytes / 1024, "tflite_gz_kb": sizes.gzip_bytes / 1024,
               "tflite_bytes": sizes.size_bytes, "tflite_gzip_bytes": sizes.gzip_bytes,
               "accuracy": scores[v["variant"]][metric],
               "delta_pt": 100 * (scores[v["variant"]][metric] - base)
               * (1 if mode == "max" else -1)}
        if not v.get("no_keras_size"):
            row.update(_keras_sizes(Path(v["keras"])))
        rows.append(row)
    if q.keras_mode != "none":
        kq = _keras_quantized(source_path, q.keras_mode, splits,
                              comp / f"model_keras_{q.keras_mode}.keras")
        notes.append(kq["note"])
        if "model" in kq:
            acc = training.evaluate(kq["model"], splits.test, splits.task)[metric]
            rows.append({"variant": f"{prefix} keras {q.keras_mode}", **count_params(source),
                         **_keras_sizes(comp / f"model_keras_{q.keras_mode}.keras"),
                         "accuracy": acc, "delta_pt": 100 * (acc - base)})

    targets = _targets(rows, prefix)
    text = table(rows)
    if metric != "accuracy":
        text = text.replace("accuracy", metric.ljust(8))
    lines = [text, ""] + [f"target {t['name']}: {t['value']} (want {t['want']}) -> "
                          f"{'met' if t['met'] else 'NOT met'}" for t in targets] + notes
    report_text = "\n".join(lines)
    print("\n[quantize] compression report (test split, " + metric + ")\n" + report_text)
    atomic_write_text(comp / "report.txt", report_text + "\n")
    atomic_write_json(comp / "report.json", {"rows": rows, "targets": targets, "notes": notes,
                                             "representative": rep_info, "metric": metric})
    final = next(r for r in rows if r["variant"] == variants[-1]["variant"])
    ctx.state["compressed_tflite"] = str(variants[-1].get("tflite") or comp / variants[-1]["file"])
    metrics = {}
    for r in rows:
        key = r["variant"].replace(" ", "_").replace("(", "").replace(")", "")
        for k in ("params", "nonzero_params", "sparsity", "keras_bytes", "keras_gzip_bytes",
                  "tflite_bytes", "tflite_gzip_bytes", "accuracy", "delta_pt"):
            if r.get(k) is not None:
                metrics[f"quantize/{key}/{k}"] = float(r[k])
    metrics["quantize/representative_samples"] = float(n_rep)
    tracker.log_metrics(metrics)
    tracker.log_metrics(metrics, run_id=tracker.parent_id)
    tracker.log_params({"quantize.representative_fingerprint": rep_info["fingerprint"]})
    for name in ("report.json", "report.txt"):
        tracker.log_artifact(comp / name, "compressed")
    summary = {"final_variant": final["variant"], f"final_{metric}": final["accuracy"],
               "final_delta_pt": final["delta_pt"],
               "final_tflite_gzip_bytes": final.get("tflite_gzip_bytes"),
               "representative_fingerprint": rep_info["fingerprint"]}
    summary.update({f"target_{t['name']}": "met" if t["met"] else "NOT met" for t in targets})
    return summary


def _keras_sizes(path: Path) -> dict[str, Any]:
    s = file_sizes(path)
    return {"keras_kb": s.size_bytes / 1024, "keras_gz_kb": s.gzip_bytes / 1024,
            "keras_bytes": s.size_bytes, "keras_gzip_bytes": s.gzip_bytes}


def _convert_score_file(path: Path, splits, workdir: Path) -> dict[str, float]:
    if keras.backend.backend() == "tensorflow":
        return _score(splits.task, splits.test.y, LiteRTRunner(path).predict(splits.test.x))
    raise RuntimeError("scoring a tfmot .tflite needs the TensorFlow backend (tfmot engine "
                       "runs only from TensorFlow-backend pipelines)")


def _targets(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    by = {r["variant"]: r for r in rows}
    out = []

    def add(name, value, want, met):
        out.append({"name": name, "value": value, "want": want, "met": bool(met)})

    dense = by.get("dense fp32")
    ptq = by.get("dense int8 (PTQ)")
    if dense and ptq:
        ratio = ptq["tflite_bytes"] / dense["tflite_bytes"]
        add("int8_size_ratio", f"{ratio:.3f}", "<= 0.30", at_most(ratio, 0.30))
        add("ptq_int8_drop_pt", f"{0.0 - ptq['delta_pt']:.2f}", "<= 0.5",
            at_most(-ptq["delta_pt"], 0.5))
    qat = next((r for r in rows if "(QAT)" in r["variant"] and r["variant"].startswith(prefix)),
               None)
    p_ptq = by.get(f"{prefix} int8 (PTQ)")
    if qat and p_ptq:
        add("qat_drop_le_ptq_drop", f"QAT {-qat['delta_pt']:.2f} vs PTQ {-p_ptq['delta_pt']:.2f}",
            "QAT <= PTQ", at_least(qat["delta_pt"], p_ptq["delta_pt"]))
    pf = by.get("pruned fp32")
    if dense and pf:
        ratio = pf["tflite_gzip_bytes"] / dense["tflite_gzip_bytes"]
        add("pruned_gzip_ratio", f"{ratio:.3f}", "<= 0.35", at_most(ratio, 0.35))
        add("pruned_drop_pt", f"{0.0 - pf['delta_pt']:.2f}", "<= 0.5",
            at_most(-pf["delta_pt"], 0.5))
    final = qat or p_ptq
    if dense and final and prefix == "pruned":
        ratio = final["tflite_gzip_bytes"] / dense["tflite_gzip_bytes"]
        add("pruned_int8_gzip_ratio", f"{ratio:.3f}", "<= 0.12", at_most(ratio, 0.12))
    return out


if __name__ == "__main__":
    request = json.loads(Path(sys.argv[1]).read_text())
    result = convert_and_score(request)
    (Path(sys.argv[1]).parent / "result.json").write_text(json.dumps(result))
