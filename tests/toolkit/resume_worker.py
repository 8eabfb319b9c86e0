"""A training run for the kill-and-resume test: `python resume_worker.py CKPT OUT [SLEEP]`.

Trains a small dropout MLP with Adam (per-group rates with `grouped=True`), a
one-cycle schedule and checkpoints every 10 steps, printing `step N` after each
batch. Run again with the same arguments after a kill, it resumes from the
latest checkpoint.
"""

import sys
import time

import keras
import numpy as np

from kdl.callbacks.checkpoint import fit_resumable, latest_checkpoint
from kdl.optimizers import GroupedOptimizer
from kdl.schedules import OneCycle

EPOCHS, BATCH, N = 6, 32, 512


def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, 16)).astype("float32")
    y = (x[:, :4].argmax(-1)).astype("int32")
    return x, y


# Per-group rates for `build(grouped=True)`: the hidden bias frozen, the hidden
# kernel at 0.3x, the output layer at the base rate (three groups, two with state).
GROUPS = {"^hidden/bias": 0.0, "^hidden/": 0.3}


def build(grouped=False):
    keras.utils.set_random_seed(11)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(4, activation="softmax", name="out", dtype="float32"),
    ])
    steps = EPOCHS * (N // BATCH)
    optimizer = keras.optimizers.Adam(OneCycle(0.01, steps))
    if grouped:
        optimizer = GroupedOptimizer(optimizer, GROUPS)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


class Pace(keras.callbacks.Callback):
    def __init__(self, sleep):
        super().__init__()
        self.sleep = sleep

    def on_train_batch_end(self, batch, logs=None):
        print(f"step {int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))}",
              flush=True)
        time.sleep(self.sleep)


def train(ckpt_dir, sleep=0.0, grouped=False):
    x, y = data()
    before = latest_checkpoint(ckpt_dir)
    if before is not None:
        print(f"resumed from {before.name}", flush=True)
    model, _ = fit_resumable(build(grouped), x, y, epochs=EPOCHS, batch_size=BATCH, seed=3,
                             directory=ckpt_dir, every_n_steps=10, callbacks=[Pace(sleep)])
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    opt = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    return weights, opt


if __name__ == "__main__":
    w, o = train(sys.argv[1], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    np.savez(sys.argv[2], **{f"w{i}": a for i, a in enumerate(w)},
             **{f"o{i}": a for i, a in enumerate(o)})
    print("done", flush=True)
