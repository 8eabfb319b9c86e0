"""Benchmark harness: latency, throughput, size and memory of exported models.

Each thing to measure is a `Runnable`: a format, the runtime that runs it, a
loader returning a `predict(x) -> outputs` function that takes float inputs
(quantization, if any, is the runner's business), and the file on disk. For
every runnable `benchmark` measures:

- batch-1 latency of the app path (`batch1_*`: float in, float out, with the
  runner's quantize/dequantize and copies, what an app pays per call):
  warm-up calls excluded, then repeated calls until both a minimum count and
  a time budget are reached (longer when the median has not settled: the
  medians of the first and second halves differ by more than `max_drift`);
  p50, p90, mean and the count are reported;
- batch-1 latency of the kernel (`kernel_p50_ms`), where the runnable has
  one: the runtime's own call on an input tensor prepared once (LiteRT
  `invoke`), the same way. A 7 us int8 kernel behind 20 us of NumPy
  quantization is slower than fp32 on the app path and faster in the
  kernel: compare formats on the kernel column (`kernel_vs_fp32`);
- throughput at a larger batch, in examples per second (p50 of batch calls);
- file size and gzipped size (`kdl.io.file_sizes`: gzip -9, a directory as a
  gzipped tar);
- memory: the growth of this process's resident set (VmRSS, Linux
  `/proc/self/statm`) from before loading to the highest sample taken after
  loading, warm-up and the timed runs. It is an approximation: memory freed
  by an earlier runnable and reused by a later one is not counted again, and
  it is left empty where `/proc` is absent.

Ratios are taken inside one process: latency against the Keras `model(x)`
row, size against the TFLite fp32 file. `targets` compares them with the
project's targets, for printing, not asserting.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdl.io import GZIP_LEVEL, atomic_write_text, file_sizes

Predict = Callable[[np.ndarray], Any]

COLUMNS = (
    "format", "runtime", "threads", "file", "size_bytes", "gzip_bytes", "size_vs_fp32",
    "batch1_p50_ms", "batch1_p90_ms", "batch1_mean_ms", "batch1_reps", "median_drift_pct",
    "kernel_p50_ms", "kernel_vs_fp32", "latency_vs_keras", "throughput_batch",
    "throughput_per_s", "rss_delta_mb",
    "metric", "metric_delta", "max_abs_diff", "top1_agreement",
)
EXTRA_COLUMNS = ("metric", "metric_delta", "max_abs_diff", "top1_agreement")

TARGET_LATENCY_RATIO = 0.25  # LiteRT fp32 batch-1 p50 / Keras model(x) p50
TARGET_INT8_SIZE_RATIO = 0.30  # int8 file / fp32 file, models over 100K params
TARGET_MIN_PARAMS = 100_000
TARGET_INT8_KERNEL_RATIO = 1.0  # LiteRT int8 invoke p50 / fp32 invoke p50, batch 1


@dataclass
class Runnable:
    """One thing to benchmark.

    Args:
        format: the export format ("keras", "saved_model", "tflite_fp32", ...).
        runtime: what runs it ("litert", "tf.saved_model", "keras/jax", ...).
        load: called once, inside the memory measurement; returns
            `predict(x)`, which takes a float batch and returns outputs
            computed to the end (host arrays, not pending device work).
        path: the file or directory on disk, for sizes; None for none.
        threads: CPU threads the runtime was given, if it takes a count.
        extra: values for `EXTRA_COLUMNS` (metric, parity) from elsewhere.
        kernel: `kernel(predict, x)` prepares the batch `x` once and returns a
            no-argument function that runs only the runtime's kernel on it;
            None: no kernel column for this row.
    """

    format: str
    runtime: str
    load: Callable[[], Predict]
    path: str | Path | None = None
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kernel: Callable[[Predict, np.ndarray], Callable[[], Any]] | None = None

    def __post_init__(self):
        unknown = set(self.extra) - set(EXTRA_COLUMNS)
        if unknown:
            raise ValueError(f"Runnable.extra: unknown keys {sorted(unknown)}; "
                             f"allowed: {list(EXTRA_COLUMNS)}")


@dataclass
class BenchSettings:
    """How long and how often to measure.

    Args:
        warmup: untimed calls before timing (and at least `warmup_s` seconds).
        warmup_s: minimum warm-up time in seconds.
        min_reps: timed calls at least.
        budget_s: timed seconds at least (per runnable, batch 1).
        max_reps: timed calls at most.
        max_drift: continue (up to 3x the budget) while the first- and
            second-half medians differ by more than this fraction.
        batch: batch size for the throughput figure; 0 skips it.
        throughput_budget_s: timed seconds for the throughput figure.
    """

    warmup: int = 10
    warmup_s: float = 0.05
    min_reps: int = 30
    budget_s: float = 0.1
    max_reps: int = 100_000
    max_drift: float = 0.05
    batch: int = 32
    throughput_budget_s: float = 0.05

    def __post_init__(self):
        if self.min_reps < 2 or self.max_reps < self.min_reps:
            raise ValueError("BenchSettings needs 2 <= min_reps <= max_reps")
        if self.budget_s <= 0 or self.throughput_budget_s <= 0:
            raise ValueError("BenchSettings budgets must be positive seconds")
        if self.batch < 0:
            raise ValueError("BenchSettings.batch must be >= 0 (0 skips throughput)")


@dataclass
class LatencyStats:
    reps: int
    p50_s: float
    p90_s: float
    mean_s: float
    drift: float  # |median(first half) - median(second half)| / median


def _percentile(sorted_times: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted data."""
    return float(np.percentile(np.asarray(sorted_times), q))


def measure_latency(fn: Callable[[], Any], *, warmup: int = 10, warmup_s: float = 0.05,
                    min_reps: int = 30, budget_s: float = 1.0, max_reps: int = 100_000,
                    max_drift: float = 0.05) -> LatencyStats:
    """Times `fn()` repeatedly; warm-up excluded; adaptive count.

    Calls `fn` at least `warmup` times and `warmup_s` seconds untimed, then
    times calls until at least `min_reps` calls and `budget_s` seconds, and
    goes on (up to `3 * budget_s`) while the median has not settled.
    """
    start = time.perf_counter()
    n = 0
    while n < warmup or time.perf_counter() - start < warmup_s:
        fn()
        n += 1
    times: list[float] = []
    t_total = 0.0
    next_check = min_reps
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        t_total += dt
        if len(times) >= next_check and t_total >= budget_s:
            if t_total >= 3 * budget_s or _drift(times) <= max_drift:
                break
            next_check = int(len(times) * 1.25) + 1  # the drift check sorts: not every call
    s = sorted(times)
    return LatencyStats(reps=len(times), p50_s=_percentile(s, 50), p90_s=_percentile(s, 90),
                        mean_s=statistics.fmean(times), drift=_drift(times))


def _drift(times: Sequence[float]) -> float:
    half = len(times) // 2
    if half < 1:
        return math.inf
    a, b = statistics.median(times[:half]), statistics.median(times[half:])
    return abs(a - b) / max(statistics.median(times), 1e-12)


def rss_bytes() -> int | None:
    """This process's resident set size (Linux `/proc/self/statm`), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n] if reps > 1 else x[:n]


def bench_one(r: Runnable, x: np.ndarray, settings: BenchSettings) -> dict[str, Any]:
    """Measures one runnable; returns a row (keys of `COLUMNS`, ratios left empty)."""
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"bench inputs need a batch axis and one example at least, got shape "
                         f"{x.shape}")
    before = rss_bytes()
    samples: list[int | None] = []
    predict = r.load()
    samples.append(rss_bytes())
    x1 = x[:1]
    timing = {"warmup": settings.warmup, "warmup_s": settings.warmup_s,
              "min_reps": settings.min_reps, "budget_s": settings.budget_s,
              "max_reps": settings.max_reps, "max_drift": settings.max_drift}
    lat = measure_latency(lambda: predict(x1), **timing)
    kernel = measure_latency(r.kernel(predict, x1), **timing) if r.kernel else None
    samples.append(rss_bytes())
    throughput = None
    if settings.batch:
        xb = _batch(x, settings.batch)
        tb = measure_latency(lambda: predict(xb), warmup=2, warmup_s=0.0, min_reps=5,
                             budget_s=settings.throughput_budget_s,
                             max_reps=settings.max_reps, max_drift=1.0)
        throughput = settings.batch / tb.p50_s
        samples.append(rss_bytes())
    size = gz = None
    if r.path is not None:
        size, gz = file_sizes(r.path)
    rss = None
    if before is not None and all(s is not None for s in samples):
        rss = max(0, max(samples) - before) / 2**20
    row = {c: None for c in COLUMNS}
    row.update({
        "format": r.format, "runtime": r.runtime, "threads": r.threads,
        "file": Path(r.path).name if r.path is not None else None,
        "size_bytes": size, "gzip_bytes": gz,
        "batch1_p50_ms": lat.p50_s * 1e3, "batch1_p90_ms": lat.p90_s * 1e3,
        "batch1_mean_ms": lat.mean_s * 1e3, "batch1_reps": lat.reps,
        "median_drift_pct": lat.drift * 100,
        "kernel_p50_ms": kernel.p50_s * 1e3 if kernel else None,
        "throughput_batch": settings.batch or None, "throughput_per_s": throughput,
        "rss_delta_mb": rss,
    })
    row.update(r.extra)
    return row


def add_ratios(rows: list[dict[str, Any]], *, baseline_format: str = "keras",
               size_format: str = "tflite_fp32") -> list[dict[str, Any]]:
    """Fills `latency_vs_keras` (p50 / baseline p50), `size_vs_fp32` and `kernel_vs_fp32`
    (kernel p50 / the kernel p50 of the `size_format` row at the same threads), in place."""
    base = next((r for r in rows if r["format"] == baseline_format), None)
    fp32 = next((r for r in rows if r["format"] == size_format and r["size_bytes"]), None)
    fp32_kernel = {r["threads"]: r["kernel_p50_ms"] for r in rows
                   if r["format"] == size_format and r.get("kernel_p50_ms")}
    for r in rows:
        if base is not None and base["batch1_p50_ms"]:
            r["latency_vs_keras"] = r["batch1_p50_ms"] / base["batch1_p50_ms"]
        if fp32 is not None and r["size_bytes"] is not None:
            r["size_vs_fp32"] = r["size_bytes"] / fp32["size_bytes"]
        if r.get("kernel_p50_ms") is not None and r["threads"] in fp32_kernel:
            r["kernel_vs_fp32"] = r["kernel_p50_ms"] / fp32_kernel[r["threads"]]
    return rows


def benchmark(runnables: Iterable[Runnable], x: np.ndarray,
              settings: BenchSettings | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Benchmarks each runnable in turn (one process) and adds the ratios.

    Args:
        runnables: what to measure; include a "keras" row for latency ratios.
        x: float inputs (already normalized), batch axis first; the first
            example is the batch-1 input, the throughput batch is drawn from all.
        settings: repetition and time budgets.
        progress: called with a line per runnable, e.g. `print`.

    Returns:
        One row (dict keyed by `COLUMNS`) per runnable.
    """
    settings = settings or BenchSettings()
    rows = []
    for r in runnables:
        row = bench_one(r, x, settings)
        if progress is not None:
            threads = f", {r.threads} thread{'s' * (r.threads != 1)}" if r.threads else ""
            progress(f"bench {r.format} [{r.runtime}{threads}]: "
                     f"p50 {row['batch1_p50_ms']:.4g} ms over {row['batch1_reps']} calls")
        rows.append(row)
    return add_ratios(rows)


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    met: bool | None  # None: not applicable or not measured
    note: str = ""


def targets(rows: Sequence[dict[str, Any]], num_params: int | None = None) -> list[Target]:
    """The project's targets, measured against the rows (printed, never asserted)."""
    out = []
    lite = next((r for r in rows if r["format"] == "tflite_fp32" and r["runtime"] == "litert"
                 and r["threads"] in (1, None)), None)
    if lite is not None and lite["latency_vs_keras"] is not None:
        v = lite["latency_vs_keras"]
        out.append(Target("LiteRT fp32 batch-1 p50 / Keras model(x) p50", v,
                          TARGET_LATENCY_RATIO, v <= TARGET_LATENCY_RATIO, "1 thread"))
    else:
        out.append(Target("LiteRT fp32 batch-1 p50 / Keras model(x) p50", None,
                          TARGET_LATENCY_RATIO, None, "needs a keras row and a tflite_fp32 row"))
    kernel = next((r for r in rows if r["format"] == "tflite_int8"
                   and r.get("kernel_vs_fp32") is not None and r["threads"] in (1, None)), None)
    name = "LiteRT int8 / fp32 kernel latency (invoke on a prepared tensor, batch 1)"
    if kernel is None:
        out.append(Target(name, None, TARGET_INT8_KERNEL_RATIO, None,
                          "needs tflite_int8 and tflite_fp32 rows with kernel times"))
    else:
        v = kernel["kernel_vs_fp32"]
        out.append(Target(name, v, TARGET_INT8_KERNEL_RATIO, v <= TARGET_INT8_KERNEL_RATIO,
                          "1 thread; the app path adds quantize/dequantize"))
    int8 = next((r for r in rows if r["format"] == "tflite_int8" and r["size_vs_fp32"]), None)
    name = f"int8 size / fp32 size (models over {TARGET_MIN_PARAMS:,} params)"
    if int8 is None:
        out.append(Target(name, None, TARGET_INT8_SIZE_RATIO, None,
                          "needs tflite_int8 and tflite_fp32 rows"))
    else:
        v = int8["size_vs_fp32"]
        if num_params is not None and num_params <= TARGET_MIN_PARAMS:
            out.append(Target(name, v, TARGET_INT8_SIZE_RATIO, None,
                              f"not applicable: the model has {num_params:,} params"))
        else:
            out.append(Target(name, v, TARGET_INT8_SIZE_RATIO, v <= TARGET_INT8_SIZE_RATIO,
                              "" if num_params is not None else "parameter count unknown"))
    return out


# ---------------------------------------------------------------------------
# Writers


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r[c] for c in COLUMNS})
    return buf.getvalue()


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    cols = [c for c in columns if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """Where the numbers come from: machine, Python and package versions."""
    import importlib.metadata as md

    env = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "cpus": str(os.cpu_count()), "python": platform.python_version(),
           "os": platform.platform(terse=True)}
    for pkg in ("keras", "tensorflow", "ai-edge-litert", "jax", "torch"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    import keras

    env["keras_backend"] = keras.backend.backend()
    return env


def to_markdown(rows: Sequence[dict[str, Any]], *, title: str = "Benchmark",
                target_rows: Sequence[Target] = (), settings: BenchSettings | None = None,
                env: dict[str, str] | None = None) -> str:
    settings = settings or BenchSettings()
    env = env if env is not None else environment()
    parts = [f"# {title}", "", markdown_table(rows), ""]
    if target_rows:
        parts += ["## Targets (measured, not asserted)", "",
                  "| target | value | limit | met | note |", "|---|---|---|---|---|"]
        for t in target_rows:
            met = "n/a" if t.met is None else ("yes" if t.met else "NO")
            parts.append(f"| {t.name} | {_fmt(t.value)} | <= {t.limit:g} | {met} | {t.note} |")
        parts.append("")
    parts += [
        "## Method", "",
        f"- Batch-1 latency: {settings.warmup} warm-up calls (and >= {settings.warmup_s:g} s) "
        f"excluded; then >= {settings.min_reps} timed calls and >= {settings.budget_s:g} s, "
        f"longer (up to 3x) while the first- and second-half medians differ by more than "
        f"{settings.max_drift:.0%} (`median_drift_pct`). p50/p90 are percentiles of the calls.",
        "- `batch1_*` is the app path (float in, float out: quantize/dequantize and copies "
        "included); `kernel_p50_ms` is the runtime's kernel alone (LiteRT `invoke` on an input "
        "tensor prepared once), timed the same way; `kernel_vs_fp32` = kernel p50 / the TFLite "
        "fp32 kernel p50 at the same thread count: compare formats on the kernel column.",
        f"- Throughput: batch {settings.batch}, examples per second at the p50 batch time.",
        "- Ratios in one process: `latency_vs_keras` = p50 / the Keras `model(x)` p50; "
        "`size_vs_fp32` = file size / the TFLite fp32 file.",
        f"- `gzip_bytes`: gzip level {GZIP_LEVEL} (a directory: gzipped tar; `kdl.io.file_sizes`).",
        "- `rss_delta_mb`: growth of this process's resident set (VmRSS) from before loading to "
        "the highest sample after loading, warm-up and timing; memory freed by an earlier row "
        "and reused is not counted again, so later rows can read low.",
        "- Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if v),
        "",
    ]
    return "\n".join(parts)


def write_results(rows: Sequence[dict[str, Any]], out_dir: str | Path, *,
                  title: str = "Benchmark", target_rows: Sequence[Target] = (),
                  settings: BenchSettings | None = None) -> tuple[Path, Path]:
    """Writes `benchmark.md` and `benchmark.csv` into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / "benchmark.md", out_dir / "benchmark.csv"
    atomic_write_text(csv_path, to_csv(rows))
    atomic_write_text(md_path, to_markdown(rows, title=title, target_rows=target_rows,
                                       settings=settings))
    return md_path, csv_path


# ---------------------------------------------------------------------------
# Runnables for the usual runtimes


def keras_runnable(model, *, path: str | Path | None = None,
                   extra: dict[str, Any] | None = None) -> Runnable:
    """The Keras `model(x)` call on the current backend, outputs brought to the host."""
    import keras

    def load() -> Predict:
        def predict(x):
            y = model(keras.ops.convert_to_tensor(x), training=False)
            return keras.tree.map_structure(keras.ops.convert_to_numpy, y)
        return predict

    return Runnable("keras", f"keras/{keras.backend.backend()}", load, path=path,
                    extra=dict(extra or {}))


def saved_model_runnable(path: str | Path, *, endpoint: str = "serve",
                         extra: dict[str, Any] | None = None) -> Runnable:
    """A reloaded SavedModel (`tf.saved_model.load`), its `serve` endpoint."""
    path = Path(path)

    def load() -> Predict:
        import tensorflow as tf

        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{path}: no saved_model.pb; export the saved_model format "
                                    "first")
        loaded = tf.saved_model.load(str(path))
        fn = getattr(loaded, endpoint, None)
        if fn is None:
            raise ValueError(f"{path}: no endpoint {endpoint!r}")

        def predict(x, _keep=loaded):  # the functions need the loaded object alive
            y = fn(tf.constant(x))
            return tf.nest.map_structure(lambda t: t.numpy(), y)
        return predict

    return Runnable("saved_model", "tf.saved_model", load, path=path, extra=dict(extra or {}))


def litert_runnable(path: str | Path, fmt: str, *, threads: int | None = 1,
                    extra: dict[str, Any] | None = None) -> Runnable:
    """A `.tflite` file in the LiteRT interpreter (XNNPACK on CPU), float in and out.

    Uses `kdl.export.LiteRTRunner`, which quantizes inputs and dequantizes
    outputs of full-int8 files, so every row is timed on the same float data.
    """
    from kdl.export.litert import LiteRTRunner

    def load() -> Predict:
        return LiteRTRunner(path, num_threads=threads)

    return Runnable(fmt, "litert", load, path=path, threads=threads, extra=dict(extra or {}),
                    kernel=lambda runner, x: runner.kernel(x))


def onnx_runnable(path: str | Path, *, threads: int | None = 1,
                  extra: dict[str, Any] | None = None) -> Runnable:
    """An `.onnx` file in onnxruntime (CPU execution provider)."""

    def load() -> Predict:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("benchmarking .onnx files needs `pip install "
                              "onnxruntime==1.31.1`") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.asarray(x, "float32")})

    return Runnable("onnx", "onnxruntime", load, path=path, threads=threads,
                    extra=dict(extra or {}))
