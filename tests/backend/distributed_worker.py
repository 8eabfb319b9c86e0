"""Train one tiny MLP under several `train.distribution`s in one process; save what each gives.

A subprocess of tests/backend/test_distribution.py: the device count is fixed
when JAX or TensorFlow starts, so the test sets `XLA_FLAGS` (and
`KERAS_BACKEND`) for this process. Every run trains 20 steps on the same data,
global batch and seed; `OUT` (.npz) gets each run's weights, its predictions on
a probe batch and (JAX) each variable's partition spec.

usage: python distributed_worker.py OUT.npz '<JSON list of {name, distribution}>'
"""

import json
import sys

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


def main(out: str, runs: list[dict]) -> None:
    from kdl import training
    from kdl.models import build_model

    cfgs = [from_dict({"train": {"distribution": r["distribution"], "epochs": STEPS // 4,
                                 "verbose": 0, "early_stopping": {"enabled": False},
                                 **r.get("train", {})},
                       "data": {"batch_size": BATCH}}) for r in runs]
    for cfg in cfgs:
        message = check_config(cfg.train.distribution, BATCH)
        assert message is None, message
    dists = [setup(cfg.train.distribution) for cfg in cfgs]  # before any op starts the runtime
    splits = data()
    probe = splits.val.x
    result = {}
    for run, cfg, dist in zip(runs, cfgs, dists, strict=True):
        with dist.scope():
            training.prepare(cfg.train)
            model = build_model("mlp", (8,), 3, preset="tiny", units=[16, 16])
            training.compile_for(model, "classification", cfg.train, 4)
            if dist.layout:
                dist.check_layout(model)
            fitted = training.fit(model, splits, cfg.train, BATCH)
            assert fitted.epochs_run == STEPS // 4
        name = run["name"]
        for i, w in enumerate(model.get_weights()):
            result[f"{name}/w{i}"] = w
        result[f"{name}/pred"] = np.asarray(model.predict(probe, verbose=0))
        result[f"{name}/layouts"] = json.dumps(dist.variable_layouts(model))
        result[f"{name}/devices"] = json.dumps(dist.devices)
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
