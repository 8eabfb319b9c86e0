"""Pipeline fixtures: one MLflow store and one end-to-end run, shared by the module tests."""

import pytest

from pipelines.config import load_config


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """A real SQLite MLflow store and an output root, private to this test session."""
    root = tmp_path_factory.mktemp("kdl")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "out": str(root / "saved_models")}


def recipe(store, name="digits_cnn", *overrides):
    return load_config(name, [f"output_dir={store['out']}", f"tracking.uri={store['uri']}",
                              "train.verbose=0", *overrides])


@pytest.fixture(scope="session")
def default_run(store):
    """The default recipe end to end (train + export), shortened to a few epochs."""
    from pipelines.run import run_pipeline

    cfg = recipe(store, "digits_cnn", "train.epochs=5", "tracking.experiment=e2e",
                 "stages=[train,export]")  # prune/quantize: tests/compress/test_stages.py
    run_dir, results, tracker = run_pipeline(cfg, log=lambda *_: None)
    return cfg, run_dir, results, tracker
