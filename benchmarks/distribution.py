"""Data-parallel steps/s on 1 vs 2 devices and the communication overhead per step.

Not a test. Three configurations train the same MLP with `model.fit`, interleaved
over `--reps` rounds (so machine load hits each alike), after one warm-up call:

- `one@B`:  one device, global batch B;
- `one@B/2`: one device, batch B/2 (what each device computes under data parallel);
- `dp2@B`:  `train.distribution` data_parallel on 2 devices, global batch B.

Overhead per step = t(dp2@B) - t(one@B/2): what splitting, all-reducing and
gathering cost beyond a device's own share of the work. On a CPU the 2 devices
are simulated (`--xla_force_host_platform_device_count=2`, two logical CPUs on
TensorFlow) and share the same cores, so no speed-up is expected; on an
accelerator machine (`--real`) they are real devices, and the same script is the
GPU check: it also trains 20 steps on 1 and on all devices and prints the max
weight difference (must be < 1e-5 on float32).

    KERAS_BACKEND=jax python -m benchmarks.distribution            # simulated, CPU
    KERAS_BACKEND=jax python -m benchmarks.distribution --real     # GPUs/TPUs
    KERAS_BACKEND=jax python -m benchmarks.distribution --real --dry  # that path, on a CPU

`--dry` runs the `--real` code path (timing and the equivalence check) on two
simulated CPU devices with tiny sizes: a check that the GPU check script
(benchmarks/gpu_check.sh) works before an accelerator machine is spent on it.
Steps/s are given as the median and the interquartile range over the rounds;
the overhead as the median of the per-round differences with its quartiles.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile (the median alone below 2 values)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--real", action="store_true", help="use the machine's own devices")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--dry", action="store_true",
                   help="the --real path on 2 simulated CPU devices, tiny sizes")
    args = p.parse_args(argv)
    if args.dry:
        args.real, args.reps, args.steps, args.batch, args.width = True, 2, 4, 32, 16
    if not args.real or args.dry:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=2")
    import keras
    import numpy as np

    from kdl.backend.distribution import setup
    from kdl.config import DistributionConfig

    devices = 2 if not args.real or args.dry else "all"
    dist = setup(DistributionConfig(kind="data_parallel", devices=devices))
    none = setup(DistributionConfig())
    n = len(dist.devices)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch, 64)).astype("float32")
    y = rng.integers(0, 10, size=len(x)).astype("int32")

    def build(d, b):  # compiled and warmed up at its own batch size
        with d.scope():
            keras.utils.set_random_seed(0)
            m = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(args.width, activation="relu"),
                                  keras.layers.Dense(args.width, activation="relu"),
                                  keras.layers.Dense(10)])
            m.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
            m.fit(x[:b * 2], y[:b * 2], batch_size=b, verbose=0)
        return m

    configs = {"one@B": (none, args.batch), f"one@B/{n}": (none, args.batch // n),
               f"dp{n}@B": (dist, args.batch)}
    models = {k: build(d, b) for k, (d, b) in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.reps):
        for k, (d, b) in configs.items():
            steps = args.steps
            with d.scope():
                start = time.perf_counter()
                models[k].fit(x[:steps * b], y[:steps * b], batch_size=b, epochs=1, verbose=0,
                              shuffle=False)
                times[k].append((time.perf_counter() - start) / steps)
    if n < 2:
        print(f"only {n} device here: nothing to compare (use the simulated mode on a CPU)")
        return 1
    real = args.real and not args.dry
    print(f"backend {keras.backend.backend()}, {n} devices ({'real' if real else 'simulated'}"
          f": {', '.join(dist.devices)}), MLP 64-{args.width}-{args.width}-10, batch {args.batch},"
          f" {args.steps} steps x {args.reps} interleaved rounds")
    print(f"{'config':<10} {'steps/s median':>15} {'IQR':>18} {'min..max':>18}")
    for k, ts in times.items():
        rates = [1 / t for t in ts]
        q1, _, q3 = quartiles(rates)
        print(f"{k:<10} {statistics.median(rates):>15.1f} {q1:>8.1f}..{q3:<8.1f} "
              f"{min(rates):>8.1f}..{max(rates):<8.1f}")
    base, half, dp = (statistics.median(times[k]) for k in configs)
    over = [a - b for a, b in zip(times[f"dp{n}@B"], times[f"one@B/{n}"], strict=True)]
    q1, med, q3 = quartiles(over)
    print(f"speed-up dp{n}@B vs one@B: {base / dp:.2f}x; communication overhead per step: "
          f"median {med * 1e3:.2f} ms (IQR {q1 * 1e3:.2f}..{q3 * 1e3:.2f}, min "
          f"{min(over) * 1e3:.2f}, max {max(over) * 1e3:.2f}) over a device's own "
          f"{half * 1e3:.2f} ms")
    if args.real:  # the equivalence check on real devices
        w = {}
        for k in ("one@B", f"dp{n}@B"):
            d = configs[k][0]
            m = build(d, args.batch)
            with d.scope():
                m.fit(x[:20 * args.batch], y[:20 * args.batch], batch_size=args.batch,
                      verbose=0, shuffle=False)
            w[k] = m.get_weights()
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*w.values(), strict=True))
        ok = np.isfinite(diff) and diff < 1e-5
        print(f"equivalence after 20 steps: max |w_{n} - w_1| = {diff:.2e} "
              f"({'PASS' if ok else 'FAIL'} at 1e-5)")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
