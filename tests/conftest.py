"""Shared test setup: one Keras backend per process, chosen by KERAS_BACKEND."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# JAX's compilation cache under .cache/jax: pipelines sets it, and must do so before JAX loads.
import pipelines  # noqa: E402, F401, I001
import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {BACKEND}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BACKEND != "tensorflow" and item.get_closest_marker("tf_only"):
            item.add_marker(pytest.mark.skip(reason="tf_only: needs the TensorFlow backend"))
        if BACKEND != "tensorflow" and item.get_closest_marker("once"):
            item.add_marker(pytest.mark.skip(
                reason="once: backend-independent, runs in the TensorFlow pass"))
