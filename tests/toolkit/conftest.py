"""Fixtures shared by the toolkit tests."""

import keras
import pytest


@pytest.fixture
def policy(request):
    """A global dtype policy for one test (`indirect=True` parametrization), then restored."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)
