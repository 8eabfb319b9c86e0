"""The streamed image pipeline: memory flat in the number of files, epoch time vs Keras's own.

    KERAS_BACKEND=tensorflow python -m benchmarks.image_pipeline rss --images 1000 16000
    KERAS_BACKEND=tensorflow python -m benchmarks.image_pipeline peer --epochs 4

`rss`: for each N, a fresh process loads N generated `shapes` images (64x64, PNG/JPEG)
through `image_folder` (the decode check of every file included) and trains one epoch of
the tiny CNN on the streamed training split; it reports the process's peak resident set
(`ru_maxrss`) and its growth over the state after imports. N is rounded to whole classes.

`peer`: the same MobileNetV3Small (tiny preset) on the same folder, trained by plain
`keras.Model.fit` on `keras.utils.image_dataset_from_directory` and by kdl's
`training.fit` on the `image_folder` split, epoch by epoch in alternation (so machine
load hits both alike); epoch-time ratio kdl / plain (first epoch, with tracing, left
out), median and min-max, and the same for the median time per step (the interval
between the ends of successive batches, so a batch the OS preempted does not move it);
test accuracy of each on a second generated set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_rss(n: int, root: str) -> dict:
    import keras

    from kdl.data import load_splits, make_tf_dataset
    from kdl.data.shapes import write_shapes
    from kdl.models import build_model

    folder = write_shapes(root, per_class=max(1, n // 5), image_size=64)
    base = _rss_mb()
    t = time.perf_counter()
    s = load_splits("image_folder", path=str(folder), image_size=(64, 64), normalize=False,
                    val_fraction=0.0, test_fraction=0.0)
    scan_s = time.perf_counter() - t
    after_scan = _rss_mb()
    model = build_model("cnn", s.input_shape, 5, preset="tiny")
    model.compile("adam", "sparse_categorical_crossentropy")
    t = time.perf_counter()
    model.fit(make_tf_dataset(s.train, 32, shuffle=True), epochs=1, verbose=0)
    keras.backend.clear_session()
    return {"images": len(s.train), "scan_s": scan_s, "epoch_s": time.perf_counter() - t,
            "rss_after_imports_mb": base, "rss_after_scan_mb": after_scan,
            "peak_rss_mb": _rss_mb(), "growth_mb": _rss_mb() - base}


def peer(epochs: int, per_class: int) -> dict:
    import keras
    import numpy as np

    from kdl import training
    from kdl.config import TrainConfig
    from kdl.data import load_splits, make_tf_dataset
    from kdl.data.shapes import write_shapes
    from kdl.models import build_model

    class StepTimer(keras.callbacks.Callback):
        """The intervals between the ends of successive training batches (compute and
        the wait for the next batch; the first batch of an epoch left out)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.last, self.intervals = None, []

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.last is not None:
                self.intervals.append(now - self.last)
            self.last = now

        def median(self) -> float:
            return statistics.median(self.intervals)

    folder = write_shapes(per_class=per_class, image_size=64, seed=0)
    test_folder = write_shapes(per_class=60, image_size=64, seed=1)
    plain_ds = keras.utils.image_dataset_from_directory(
        folder, image_size=(64, 64), batch_size=32, shuffle=True, seed=0,
        label_mode="int")
    splits = load_splits("image_folder", path=str(folder), image_size=(64, 64),
                         normalize=False, val_fraction=0.0, test_fraction=0.0)
    test = load_splits("image_folder", path=str(test_folder), image_size=(64, 64),
                       normalize=False, val_fraction=0.0, test_fraction=0.0).train
    keras.utils.set_random_seed(0)
    plain = build_model("mobilenet_v3_small", (64, 64, 3), 5, preset="tiny")
    plain.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    keras.utils.set_random_seed(0)
    ours = build_model("mobilenet_v3_small", (64, 64, 3), 5, preset="tiny")
    cfg = TrainConfig(epochs=1, optimizer="adam", learning_rate=3e-3, schedule="constant",
                      clipnorm=None, verbose=0)
    cfg.early_stopping.enabled = False
    training.compile_for(ours, "classification", cfg, 1)
    times = {"plain": [], "kdl": []}
    steps = {"plain": [], "kdl": []}  # per epoch: the median interval between batch ends
    timer = StepTimer()
    for e in range(epochs):
        t = time.perf_counter()
        plain.fit(plain_ds, epochs=1, verbose=0, callbacks=[timer])
        times["plain"].append(time.perf_counter() - t)
        steps["plain"].append(timer.median())
        t = time.perf_counter()
        training.fit(ours, splits, cfg, 32, callbacks=[timer])
        times["kdl"].append(time.perf_counter() - t)
        steps["kdl"].append(timer.median())
        print(f"epoch {e + 1}: plain {times['plain'][-1]:.1f}s "
              f"({steps['plain'][-1] * 1000:.0f} ms/step), kdl {times['kdl'][-1]:.1f}s "
              f"({steps['kdl'][-1] * 1000:.0f} ms/step)", flush=True)
    ratios = [k / p for k, p in zip(times["kdl"][1:], times["plain"][1:], strict=True)]
    step_ratios = [k / p for k, p in zip(steps["kdl"][1:], steps["plain"][1:], strict=True)]

    def accuracy(model):
        pred = model.predict(make_tf_dataset(test, 64, targets=False), verbose=0).argmax(1)
        return float(np.mean(pred == test.y))

    return {"images": len(splits.train), "epochs": epochs, "times_s": times,
            "epoch_ratio_median": statistics.median(ratios),
            "epoch_ratio_range": [min(ratios), max(ratios)],
            "step_ratio_median": statistics.median(step_ratios),
            "step_ratio_range": [min(step_ratios), max(step_ratios)],
            "test_accuracy": {"plain": accuracy(plain), "kdl": accuracy(ours)},
            "test_images": len(test)}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rss")
    r.add_argument("--images", type=int, nargs="+", default=[1000, 16000])
    r.add_argument("--root", default="/tmp/kdl-rss-shapes")
    r.add_argument("--one", type=int, help=argparse.SUPPRESS)
    q = sub.add_parser("peer")
    q.add_argument("--epochs", type=int, default=4)
    q.add_argument("--per-class", type=int, default=300)
    args = p.parse_args()
    if args.cmd == "rss" and args.one:
        print("RESULT " + json.dumps(one_rss(args.one, args.root)))
        return
    if args.cmd == "rss":
        out = []
        for n in args.images:  # a fresh process each: peak RSS is per process
            proc = subprocess.run([sys.executable, "-m", "benchmarks.image_pipeline", "rss",
                                   "--one", str(n), "--root", args.root],
                                  capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            out.append(json.loads(line[7:]))
            print(json.dumps(out[-1]), flush=True)
        print(json.dumps(out, indent=1))
        return
    print(json.dumps(peer(args.epochs, args.per_class), indent=1))


if __name__ == "__main__":
    main()
