"""Train one tiny MLP under several `train.distribution`s in one process; save what each gives.

A subprocess of tests/backend/test_distribution.py: the device count is fixed
when JAX or TensorFlow starts, so the test sets `XLA_FLAGS` (and
`KERAS_BACKEND`) for this process. Every run trains 20 steps on the same data,
global batch and seed; `OUT` (.npz) gets each run's weights, its predictions on
a probe batch and (JAX) each variable's partition spec.

A run may also name `train` overrides (e.g. `param_groups`, `checkpoint`), a
`model` ("mlp", or "vae": a model trained by its own loss), and `interrupt_at`
(with `train.checkpoint`): training stops with an exception after that many
steps, then a freshly built model is fitted again in the same distribution
scope, which resumes from the latest checkpoint (as `pipelines run --resume`
does); `<name>/resumed_from` is that checkpoint's step and
`<name>/devices_per_variable` the fewest devices holding a variable of the
model that ends the run.

usage: python distributed_worker.py OUT.npz '<JSON list of {name, distribution, ...}>'
"""

import contextlib
import json
import sys
from pathlib import Path

import keras
import numpy as np

from kdl.backend.distribution import check_config, setup
from pipelines.config import from_dict

STEPS = 20
BATCH = 32


def data():
    from kdl.data import DataSplits, Split
    from kdl.data.core import Normalizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 4 + BATCH, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32") + (x[:, 2] > 1).astype("int32")
    train, val = Split(x[:BATCH * 4], y[:BATCH * 4]), Split(x[BATCH * 4:], y[BATCH * 4:])
    identity = Normalizer(np.zeros(8, "float32"), np.ones(8, "float32"))
    return DataSplits(train, val, val, "classification", ["0", "1", "2"], identity, "")


class Interrupt(Exception):
    pass


class StopAt(keras.callbacks.Callback):
    """Raise `Interrupt` after `steps` batches: a kill, in process."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            raise Interrupt


def build(run: dict, cfg, dist):
    """The run's model, compiled, inside `dist`'s scope."""
    from kdl import training
    from kdl.models import build_model
    from kdl.registry import MODELS

    if run.get("model", "mlp") == "vae":
        model = MODELS.build("vae", preset="tiny", input_shape=(8,))
        model.compile(training.make_optimizer(cfg.train, 4))
        return model
    model = build_model("mlp", (8,), 3, preset="tiny", units=[16, 16])
    training.compile_for(model, "classification", cfg.train, 4)
    if dist.layout:
        dist.check_layout(model)
    return model


def devices_holding(variable) -> int:
    """How many devices hold a copy or a shard of `variable` (JAX sharding, TF mirroring)."""
    sharding = getattr(getattr(variable, "value", None), "sharding", None)
    if sharding is not None:
        return len(sharding.device_set)
    values = getattr(getattr(variable, "value", variable), "values", None)
    return len(values) if values is not None else 1


def main(out: str, runs: list[dict]) -> None:
    from kdl import training
    from kdl.callbacks.checkpoint import latest_checkpoint

    cfgs = [from_dict({"train": {"distribution": r["distribution"], "epochs": STEPS // 4,
                                 "verbose": 0, "early_stopping": {"enabled": False},
                                 **r.get("train", {})},
                       "data": {"batch_size": BATCH}}) for r in runs]
    for cfg in cfgs:
        message = check_config(cfg.train.distribution, BATCH)
        assert message is None, message
    # Before any op starts the runtime; one engine per distinct distribution: TensorFlow's
    # collectives of a second MirroredStrategy in the process reuse the first's keys.
    engines = {}
    for r, cfg in zip(runs, cfgs, strict=True):
        key = json.dumps(r["distribution"], sort_keys=True)
        engines.setdefault(key, setup(cfg.train.distribution))
    dists = [engines[json.dumps(r["distribution"], sort_keys=True)] for r in runs]
    splits = data()
    probe = splits.val.x
    result = {}
    for run, cfg, dist in zip(runs, cfgs, dists, strict=True):
        name = run["name"]
        ckpt = Path(out).parent / f"ckpt-{name}" if cfg.train.checkpoint else None
        with dist.scope():
            training.prepare(cfg.train)
            if "interrupt_at" in run:
                with contextlib.suppress(Interrupt):
                    training.fit(build(run, cfg, dist), splits, cfg.train, BATCH,
                                 callbacks=[StopAt(run["interrupt_at"])], checkpoint_dir=ckpt)
                step = latest_checkpoint(ckpt).name
                result[f"{name}/resumed_from"] = int(step.split("-")[1])
            fitted = training.fit(build(run, cfg, dist), splits, cfg.train, BATCH,
                                  checkpoint_dir=ckpt)
            assert len(next(iter(fitted.history.values()))) == STEPS // 4 - (
                run.get("interrupt_at", 0) // 4)
            model = fitted.extra["model"]
        result[f"{name}/devices_per_variable"] = min(devices_holding(v) for v in model.variables)
        for i, w in enumerate(model.get_weights()):
            result[f"{name}/w{i}"] = w
        result[f"{name}/pred"] = np.asarray(model.predict(probe, verbose=0)
                                            if run.get("model", "mlp") == "mlp" else model(probe))
        result[f"{name}/layouts"] = json.dumps(dist.variable_layouts(model))
        result[f"{name}/devices"] = json.dumps(dist.devices)
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
