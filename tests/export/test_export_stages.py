"""The export stage's bundle step and the bench stage, on a real (tiny) run directory."""

import csv
import json
import shutil

import keras
import pytest

from pipelines.config import ConfigError, load_config
from pipelines.tracking import run_label

FAST = ["train.epochs=2", "export.formats=[saved_model,tflite_fp32,tflite_int8]",
        "bench.budget_s=0.02", "bench.throughput_budget_s=0.01", "bench.min_reps=5",
        "bench.batch=8", "export.golden_examples=4"]


def run(tmp_path, extra=(), stages=("train", "export", "bench")):
    from pipelines.run import run_pipeline

    cfg = load_config("iris_mlp", [f"output_dir={tmp_path}", *FAST, *extra])
    run_dir, results, tracker = run_pipeline(cfg, list(stages), log=lambda *a: None)
    return cfg, run_dir, results, tracker


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("runs the pipeline once, in the TensorFlow pass (mark the test tf_only)")
    return run(tmp_path_factory.mktemp("runs"), ["tracking.enabled=false"])


@pytest.mark.tf_only
def test_export_stage_writes_a_verified_bundle(finished):
    from pipelines.verify_bundle import verify_bundle

    cfg, run_dir, results, _ = finished
    bundle = run_dir / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "contract.json", "golden.json", "model_fp32.tflite", "model_int8.tflite"]
    assert not list(run_dir.glob(".bundle*"))  # no temporary left behind
    code, lines = verify_bundle(bundle)
    assert code == 0, lines
    contract = json.loads((bundle / "contract.json").read_text())
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    assert contract["preprocessing"]["normalization"]["mean"] == pytest.approx(
        prep["normalization"]["mean"])
    assert contract["labels"] == prep["label_names"] == ["setosa", "versicolor", "virginica"]
    assert contract["model"]["version"] == run_dir.name
    assert contract["model"]["data_fingerprint"] == prep["data_fingerprint"]
    for name in ("model_fp32.tflite", "model_int8.tflite"):
        assert (bundle / name).read_bytes() == (run_dir / "export" / name).read_bytes()
    assert contract["files"]["model_int8.tflite"]["inputs"][0]["dtype"] == "int8"
    golden = json.loads((bundle / "golden.json").read_text())
    assert golden["inputs"][0]["shape"] == [4, 4]
    assert results["export"]["bundle_files"] == 2


@pytest.mark.tf_only
def test_bench_stage_writes_the_table(finished):
    cfg, run_dir, results, _ = finished
    with open(run_dir / "benchmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["format"], r["threads"]) for r in rows] == [
        ("keras", ""), ("saved_model", ""), ("tflite_fp32", "1"), ("tflite_fp32", "2"),
        ("tflite_int8", "1"), ("tflite_int8", "2")]
    report = json.loads((run_dir / "export" / "report.json").read_text())
    for r in rows:
        assert 0 < float(r["batch1_p50_ms"]) <= float(r["batch1_p90_ms"])
        assert int(r["batch1_reps"]) >= 5 and float(r["throughput_per_s"]) > 0
        if r["format"] != "keras":
            path = run_dir / "export" / r["file"]
            size = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                    if path.is_dir() else path.stat().st_size)
            assert int(r["size_bytes"]) == size
            assert float(r["metric"]) == pytest.approx(report["formats"][r["format"]]["value"])
    assert rows[0]["latency_vs_keras"] == "1.0"
    assert float(rows[4]["size_vs_fp32"]) == pytest.approx(
        int(rows[4]["size_bytes"]) / int(rows[2]["size_bytes"]))
    md = (run_dir / "benchmark.md").read_text()
    assert "## Targets (measured, not asserted)" in md and "| tflite_int8 | litert | 2 |" in md
    assert results["bench"]["rows"] == 6


@pytest.mark.tf_only
def test_failed_verification_leaves_no_bundle(finished, monkeypatch):
    import pipelines.verify_bundle as vb
    from pipelines import mobile
    from pipelines.stages.common import Context, load_data
    from pipelines.tracking import Tracker

    cfg, run_dir, _, _ = finished
    before = sorted(p.name for p in (run_dir / "bundle").iterdir())
    monkeypatch.setattr(vb, "verify_bundle", lambda d: (1, ["FAIL model_int8.tflite: off"]))
    splits = load_data(cfg)
    model = keras.saving.load_model(run_dir / "model.keras")
    report = json.loads((run_dir / "export" / "report.json").read_text())
    ctx = Context(cfg, run_dir, Tracker(cfg.tracking, cfg.name))
    with pytest.raises(mobile.BundleVerificationError, match="FAIL model_int8.tflite: off"):
        mobile.write_and_verify_bundle(ctx, splits, model.predict(splits.test.x, verbose=0),
                                       report)
    assert sorted(p.name for p in (run_dir / "bundle").iterdir()) == before  # old one intact
    assert not list(run_dir.glob(".bundle*"))


@pytest.mark.tf_only
def test_bench_needs_an_exported_run(finished, tmp_path):
    from pipelines.stages import bench
    from pipelines.stages.common import Context
    from pipelines.tracking import Tracker

    cfg, run_dir, _, _ = finished
    bare = tmp_path / "bare"
    bare.mkdir()
    ctx = Context(cfg, bare, Tracker(cfg.tracking, cfg.name))
    with pytest.raises(FileNotFoundError, match="has no model.keras"):
        bench.run(ctx)
    shutil.copy(run_dir / "model.keras", bare / "model.keras")
    with pytest.raises(FileNotFoundError, match=r"no export/report.json: run the export stage"):
        bench.run(ctx)


@pytest.mark.once
def test_bundle_and_bench_config_are_checked():
    with pytest.raises(ConfigError, match=r"export.bundle\[0\]: 'tflite_int8' is not an "
                                          r"exported .tflite format; choose from export.formats: "
                                          r"tflite_fp32"):
        load_config("iris_mlp", ["export.formats=[tflite_fp32]", "export.bundle=[tflite_int8]"])
    # "is this a .tflite file" is the format table's field, not the name's prefix
    with pytest.raises(ConfigError, match=r"export.bundle\[0\]: 'saved_model' is not an "
                                          r"exported .tflite format; choose from export.formats: "
                                          r"tflite_fp32, tflite_int8"):
        load_config("iris_mlp", ["export.formats=[saved_model,tflite_fp32,tflite_int8]",
                                 "export.bundle=[saved_model]"])
    with pytest.raises(ConfigError, match="bench.threads"):
        load_config("iris_mlp", ["bench.threads=[0]"])


@pytest.mark.slow
@pytest.mark.tf_only
def test_registry_alias_candidate_after_verify(tmp_path):
    """With MLflow on: bench metrics and table logged, bundle registered as `candidate`."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, run_dir, results, tracker = run(tmp_path, [f"tracking.uri={uri}"])
    client = MlflowClient(uri)
    name = f"kdl-{cfg.name}"
    mv = client.get_model_version_by_alias(name, "candidate")
    assert mv.tags["kind"] == "mobile-bundle" and mv.tags["run_dir"] == run_label(run_dir)
    assert mv.tags["source_run"] == tracker.parent_id
    assert results["export"]["candidate"] == f"{name} v{mv.version}"
    files = {f.path for f in client.list_artifacts(mv.run_id, "bundle")}
    assert "bundle/contract.json" in files
    metrics = client.get_run(tracker.parent_id).data.metrics
    assert metrics["bench/tflite_fp32/batch1_p50_ms_t1"] > 0
    assert metrics["bench/tflite_int8/size_bytes"] == (run_dir / "export" /
                                                      "model_int8.tflite").stat().st_size
    (bench_run,) = client.search_runs(
        [client.get_run(tracker.parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{tracker.parent_id}' and tags.stage = 'bench'")
    tables = {f.path for f in client.list_artifacts(bench_run.info.run_id, "bench")}
    assert {"bench/benchmark.json", "bench/benchmark.md", "bench/benchmark.csv"} <= tables


@pytest.mark.slow  # trains a tiny LSTM, exports, and lets the converter really crash
@pytest.mark.tf_only
def test_converter_crash_fails_the_export_stage_cleanly(tmp_path, monkeypatch):
    """With kdl's recurrent recipe switched off (injected), full-int8 calibration of the LSTM
    segfaults the converter process: the stage fails with one message (stage, model,
    format, last words), writes tflite_int8.failed.json, marks its MLflow runs FAILED and
    leaves no work directory."""
    from mlflow.tracking import MlflowClient

    from kdl.export import formats
    from pipelines.run import StageFailed, run_pipeline

    monkeypatch.setattr(formats, "unrolled_model", lambda model: model)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config("rnn_sine", [f"output_dir={tmp_path}", f"tracking.uri={uri}",
                                   "model.preset=tiny", "train.epochs=1",
                                   "data.params={n: 300, length: 8}",
                                   "export.formats=[tflite_int8]"])
    with pytest.raises(StageFailed, match=r"export of model 'rnn' failed: tflite_int8: the TFLite "
                                          r"converter crashed while converting and calibrating "
                                          r"\(SIGSEGV\); its last words: .*calibrator"):
        run_pipeline(cfg, ["train", "export"], log=lambda *a: None)
    (run_dir,) = [p for p in (tmp_path / cfg.name).iterdir() if p.is_dir()]
    report = json.loads((run_dir / "tflite_int8.failed.json").read_text())
    assert report["signal"] == "SIGSEGV" and report["model"] == "rnn"
    assert not list(run_dir.glob(".*")) and not (run_dir / "export").exists()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
    status = {r.data.tags.get("stage", "parent"): r.info.status for r in runs}
    assert status == {"parent": "FAILED", "train": "FINISHED", "export": "FAILED"}
