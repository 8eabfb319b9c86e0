"""The benchmark harness: timing loop, sizes, ratios, targets and the md/csv writers."""

import csv
import gzip
import os
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kdl.export import bench
from kdl.export.bench import BenchSettings, Runnable

FAST = BenchSettings(warmup=3, warmup_s=0.0, min_reps=10, budget_s=0.05, batch=16,
                     throughput_budget_s=0.02)


def numpy_runnable(fmt, path, w, threads=None, **kw):
    def load():
        return lambda x: np.tanh(x @ w)
    return Runnable(fmt, "numpy", load, path=path, threads=threads, **kw)


def test_warmup_is_excluded_and_reps_adapt():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= 5:
            time.sleep(0.05)  # slow first calls: a cold cache, a JIT compile

    s = bench.measure_latency(fn, warmup=5, warmup_s=0.0, min_reps=20, budget_s=0.01,
                              max_drift=1.0)
    assert s.reps >= 20 and len(calls) == 5 + s.reps
    assert s.p90_s < 0.05  # none of the slow warm-up calls was timed
    assert s.p50_s <= s.p90_s

    s = bench.measure_latency(lambda: time.sleep(0.002), warmup=1, warmup_s=0.0, min_reps=3,
                              budget_s=0.05, max_drift=1.0)
    assert s.p50_s >= 0.002 and s.reps >= 0.05 / 0.004  # kept going until the time budget
    with pytest.raises(ValueError, match="min_reps"):
        BenchSettings(min_reps=1)


def test_percentiles_match_numpy():
    data = sorted(np.random.default_rng(0).exponential(size=101).tolist())
    assert bench._percentile(data, 90) == pytest.approx(np.percentile(data, 90))
    assert bench._drift([1.0, 1.0, 2.0, 2.0]) == pytest.approx(1 / 1.5)


def test_file_sizes_match_disk(tmp_path):
    """The one size measure (kdl.io.file_sizes): raw bytes and gzip -9; a directory is
    its files' bytes and one gzipped tar, the same whenever and by whomever written."""
    f = tmp_path / "w.bin"
    data = np.random.default_rng(0).integers(0, 4, 50_000, dtype="uint8").tobytes()
    f.write_bytes(data)
    size, gz = bench.file_sizes(f)
    assert size == len(data) == f.stat().st_size
    assert gz == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert gz < size  # 2 bits of entropy per byte compress
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"x" * 1000)
    (d / "sub" / "b").write_bytes(b"y" * 500)
    sizes = bench.file_sizes(d)
    assert sizes.size_bytes == 1500 and 0 < sizes.gzip_bytes < 1500
    os.utime(d / "a", (0, 12345))
    assert bench.file_sizes(d) == sizes  # file times are not in the figure
    with pytest.raises(FileNotFoundError, match="nope"):
        bench.file_sizes(tmp_path / "nope")


@pytest.mark.once
def test_one_size_measure_everywhere():
    """Export report, compression report and bench log the same `gzip_bytes`: one function,
    and no other gzip measure in kdl/ or pipelines/."""
    from kdl import io
    from kdl.compress import report

    assert bench.file_sizes is report.file_sizes is io.file_sizes
    root = Path(__file__).resolve().parents[2]
    worker = (root / "pipelines" / "export_worker.py").read_text()
    assert "file_sizes(path)" in worker
    others = [str(p.relative_to(root)) for d in ("kdl", "pipelines")
              for p in (root / d).rglob("*.py") if p != root / "kdl" / "io.py"
              and any(w in p.read_text() for w in ("gzip.compress", "GzipFile", "compresslevel"))]
    assert not others, f"a second gzip measure in {others}: use kdl.io.file_sizes"


def test_benchmark_writes_md_and_csv(tmp_path):
    """Keras model(x) on this backend against a NumPy runnable; files written with ratios."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    w = np.asarray(model.layers[0].kernel)
    fp32 = tmp_path / "model_fp32.tflite"
    fp32.write_bytes(b"\x00" * 4000)
    int8 = tmp_path / "model_int8.tflite"
    int8.write_bytes(b"\x01" * 1000)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    runnables = [
        bench.keras_runnable(model),
        numpy_runnable("tflite_fp32", fp32, w, threads=1, extra={"max_abs_diff": 0.0}),
        numpy_runnable("tflite_int8", int8, w, threads=1),
    ]
    lines = []
    rows = bench.benchmark(runnables, x, FAST, progress=lines.append)
    assert len(lines) == 3 and "p50" in lines[0]
    keras_row, fp32_row, int8_row = rows
    assert keras_row["runtime"] == f"keras/{keras.backend.backend()}"
    for r in rows:
        assert 0 < r["batch1_p50_ms"] <= r["batch1_p90_ms"]
        assert r["batch1_reps"] >= FAST.min_reps
        assert r["throughput_batch"] == 16 and r["throughput_per_s"] > 0
    assert keras_row["latency_vs_keras"] == 1.0
    assert fp32_row["latency_vs_keras"] == pytest.approx(
        fp32_row["batch1_p50_ms"] / keras_row["batch1_p50_ms"])
    assert (fp32_row["size_bytes"], int8_row["size_bytes"]) == (4000, 1000)
    assert int8_row["size_vs_fp32"] == 0.25
    assert int8_row["gzip_bytes"] < 100  # a run of one byte value

    md_path, csv_path = bench.write_results(
        rows, tmp_path / "run", target_rows=bench.targets(rows, num_params=200_000),
        settings=FAST)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["benchmark.csv",
                                                                     "benchmark.md"]
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(bench.COLUMNS)
    assert [t["format"] for t in table] == ["keras", "tflite_fp32", "tflite_int8"]
    assert int(table[1]["size_bytes"]) == fp32.stat().st_size
    assert float(table[1]["batch1_p50_ms"]) == pytest.approx(fp32_row["batch1_p50_ms"])
    assert table[1]["max_abs_diff"] == "0.0" and table[0]["max_abs_diff"] == ""
    md = md_path.read_text()
    assert "| format | runtime | threads | file | size_bytes |" in md
    assert "| int8 size / fp32 size (models over 100,000 params) | 0.25 | <= 0.3 | yes |" in md
    assert "## Method" in md


@pytest.mark.once
def test_targets_are_reported_not_asserted():
    def row(fmt, runtime="litert", threads=1, p50=1.0, size=None):
        r = {c: None for c in bench.COLUMNS}
        r.update(format=fmt, runtime=runtime, threads=threads, batch1_p50_ms=p50,
                 size_bytes=size)
        return r

    rows = bench.add_ratios([row("keras", "keras/jax", None, 2.0), row("tflite_fp32", size=1000),
                             row("tflite_int8", size=400)])
    lat, kernel, size = bench.targets(rows, num_params=150_000)
    assert (lat.value, lat.met) == (0.5, False)
    assert (kernel.value, kernel.met) == (None, None)  # no kernel column measured
    assert (size.value, size.met) == (0.4, False)
    small = bench.targets(rows, num_params=5_000)[2]
    assert small.met is None and "not applicable" in small.note
    rows[1]["batch1_p50_ms"] = 0.4
    assert bench.targets(bench.add_ratios(rows), num_params=150_000)[0].met is True
    assert [t.value for t in bench.targets([row("tflite_fp32")])] == [None, None, None]


@pytest.mark.once
def test_int8_vs_fp32_comes_from_the_kernel_column():
    """The app path (quantize/dequantize included) may be slower for int8 while its kernel
    is faster: the int8/fp32 figure is the kernel's, at the same thread count."""
    def row(fmt, threads, app, kernel):
        return {c: None for c in bench.COLUMNS} | {
            "format": fmt, "runtime": "litert", "threads": threads, "batch1_p50_ms": app,
            "kernel_p50_ms": kernel}

    rows = bench.add_ratios([row("tflite_fp32", 1, 0.010, 0.008), row("tflite_int8", 1, 0.014,
                                                                       0.004),
                             row("tflite_fp32", 2, 0.009, 0.010), row("tflite_int8", 2, 0.011,
                                                                       0.005)])
    assert [r["kernel_vs_fp32"] for r in rows] == [1.0, 0.5, 1.0, 0.5]
    kernel = bench.targets(rows)[1]
    assert (kernel.value, kernel.met) == (0.5, True)
    rows[1]["kernel_p50_ms"] = 0.012
    assert bench.targets(bench.add_ratios(rows))[1].met is False
    rows[1]["kernel_p50_ms"] = float("nan")  # a broken figure fails the target
    assert bench.targets(bench.add_ratios(rows))[1].met is False


@pytest.mark.once
def test_writers_are_atomic(tmp_path, monkeypatch):
    rows = [{c: None for c in bench.COLUMNS} | {"format": "keras", "batch1_p50_ms": 1.0}]
    bench.write_results(rows, tmp_path)
    before = (tmp_path / "benchmark.csv").read_text()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(bench.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        bench.write_results(rows + rows, tmp_path)
    assert (tmp_path / "benchmark.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.csv", "benchmark.md"]
    with pytest.raises(ValueError, match="unknown keys"):
        Runnable("x", "y", lambda: None, extra={"accuracy": 1})


@pytest.mark.tf_only
def test_litert_saved_model_and_keras_on_one_table(tiny_export, tmp_path):
    """Real runtimes: LiteRT at 1 and 2 threads, the reloaded SavedModel, Keras model(x)."""
    from ai_edge_litert.interpreter import Interpreter

    t = tiny_export

    def litert(path, threads):
        def load():
            interp = Interpreter(model_path=str(path), num_threads=threads)
            interp.allocate_tensors()
            (d_in,), (d_out,) = interp.get_input_details(), interp.get_output_details()

            def predict(x):
                if list(d_in["shape"]) != list(x.shape):
                    interp.resize_tensor_input(d_in["index"], list(x.shape))
                    interp.allocate_tensors()
                    d_in["shape"] = np.array(x.shape)
                interp.set_tensor(d_in["index"], x)
                interp.invoke()
                return interp.get_tensor(d_out["index"])
            return predict
        return Runnable("tflite_fp32", "litert", load, path=path, threads=threads)

    rows = bench.benchmark([bench.keras_runnable(t.model, path=t.keras_path),
                            bench.saved_model_runnable(t.saved_model),
                            litert(t.fp32, 1), litert(t.fp32, 2)], t.x, FAST)
    assert [(r["format"], r["threads"]) for r in rows] == [
        ("keras", None), ("saved_model", None), ("tflite_fp32", 1), ("tflite_fp32", 2)]
    sm = rows[1]
    assert sm["size_bytes"] == sum(p.stat().st_size for p in t.saved_model.rglob("*")
                                   if p.is_file())
    assert rows[2]["size_bytes"] == t.fp32.stat().st_size
    for r in rows:
        assert r["batch1_p50_ms"] <= r["batch1_p90_ms"]
        assert r["rss_delta_mb"] is not None and r["rss_delta_mb"] >= 0
    # An 8x16x3 MLP: the interpreter call is far cheaper than a TF eager model(x) call.
    assert rows[2]["latency_vs_keras"] < 1.0
    assert all(r["kernel_p50_ms"] is None for r in rows)  # these runnables define no kernel


@pytest.mark.tf_only
def test_litert_kernel_column_runs_the_model_on_the_prepared_tensor(tiny_export):
    """`kernel_p50_ms` times the bare `invoke` of the real int8 file; the prepared tensor
    is the quantized input, so the kernel's raw output is the app path's, before dequantize."""
    from kdl.export.litert import LiteRTRunner, dequantize

    t = tiny_export
    runner = LiteRTRunner(t.int8, num_threads=1)
    invoke = runner.kernel(t.x[:1])
    invoke()
    raw = runner.interpreter.get_tensor(runner.output["index"])
    assert raw.dtype == np.int8
    np.testing.assert_array_equal(dequantize(raw, *runner.output["quantization"]),
                                  runner(t.x[:1]))
    rows = bench.benchmark([bench.litert_runnable(t.fp32, "tflite_fp32"),
                            bench.litert_runnable(t.int8, "tflite_int8")], t.x, FAST)
    assert all(r["kernel_p50_ms"] > 0 for r in rows)
    assert rows[0]["kernel_vs_fp32"] == 1.0
    assert rows[1]["kernel_vs_fp32"] == pytest.approx(
        rows[1]["kernel_p50_ms"] / rows[0]["kernel_p50_ms"])
    assert bench.saved_model_runnable(t.dir / "missing").load is not None
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        bench.saved_model_runnable(t.dir / "missing").load()
