"""What the train stage costs over a bare `model.fit`, side by side in one process.

    KERAS_BACKEND=jax python -m benchmarks.train_overhead [--epochs 10] [--repeats 3]

Three arms on the same model, data, optimizer and tf.data pipeline, interleaved
so that machine noise hits each alike; medians over the repeats:

- bare:  `model.fit(train, validation_data=val)`, no callbacks.
- loop:  `kdl.training.fit` with the NaN guard, early stopping (patience larger
         than the run, so the epoch count is equal) and per-epoch MLflow logging
         to a real SQLite store. Target: loop / bare <= 1.05.
- stage: the whole train stage (`run_pipeline(..., ["train"])`): the loop plus
         evaluation, model.keras, plots, artifacts and model registration in
         MLflow. Reported, not targeted: its fixed cost shrinks with longer runs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings

import keras

from kdl import training
from pipelines.config import load_config
from pipelines.run import run_pipeline
from pipelines.stages.common import load_data
from pipelines.tracking import Tracker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="digits_cnn")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    root = tempfile.mkdtemp(prefix="kdl-bench-")
    cfg = load_config(args.recipe, [
        f"train.epochs={args.epochs}", "train.verbose=0", f"output_dir={root}/runs",
        f"tracking.uri=sqlite:///{root}/mlflow.db", "train.early_stopping.patience=1000",
        "tracking.experiment=bench"])
    splits = load_data(cfg)
    steps = math.ceil(len(splits.train) / cfg.data.batch_size)

    def fresh_model():
        training.prepare(cfg.train)
        from kdl.models import build_model

        model = build_model(cfg.model.name, splits.input_shape, splits.num_outputs,
                            task=splits.task, preset=cfg.model.preset, **cfg.model.params)
        training.compile_for(model, splits.task, cfg.train, steps)
        return model

    def bare():
        from kdl.data import make_tf_dataset

        model = fresh_model()
        train = make_tf_dataset(splits.train, cfg.data.batch_size, shuffle=True)
        val = make_tf_dataset(splits.val, cfg.data.batch_size)
        start = time.perf_counter()
        model.fit(train, validation_data=val, epochs=cfg.train.epochs, verbose=0, shuffle=False)
        return time.perf_counter() - start

    tracker = Tracker(cfg.tracking, "bench")
    tracker.start("loop", {})

    def loop():
        model = fresh_model()
        start = time.perf_counter()
        training.fit(model, splits, cfg.train, cfg.data.batch_size,
                     callbacks=[tracker.keras_callback("train/")])
        return time.perf_counter() - start

    def stage():
        start = time.perf_counter()
        run_pipeline(cfg, ["train"], log=lambda *_: None)
        return time.perf_counter() - start

    arms = {"bare": bare, "loop": loop, "stage": stage}
    for fn in arms.values():  # warm-up: compilation caches, MLflow schema creation
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(args.repeats):
        for name, fn in arms.items():
            times[name].append(fn())
    med = {k: statistics.median(v) for k, v in times.items()}
    backend = keras.backend.backend()
    print(f"\ntrain overhead, backend={backend}, {args.recipe}, {args.epochs} epochs, "
          f"median of {args.repeats}")
    print(f"  bare model.fit      {med['bare']:7.2f} s   1.00x")
    ratio = med["loop"] / med["bare"]
    verdict = "meets" if ratio <= 1.05 else "MISSES"
    print(f"  kdl fit + tracking  {med['loop']:7.2f} s   {ratio:.3f}x  ({verdict} target <= 1.05)")
    print(f"  whole train stage   {med['stage']:7.2f} s   {med['stage'] / med['bare']:.3f}x  "
          "(adds evaluation, saving, plots, artifacts, model registration)")


if __name__ == "__main__":
    main()
