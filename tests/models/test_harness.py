"""Every registered model through the shared harness (kdl.testing)."""

import keras
import pytest

import kdl.models  # noqa: F401  (registers the zoo)
from kdl import testing
from kdl.registry import MODELS

# keras.applications backbones (kdl.models.mobile) take seconds per check even at their
# tiny presets: they go through the harness in the slow suite (tests/models/test_mobile.py
# keeps a fast forward/save check of one of them).
CASES = [pytest.param(c, marks=pytest.mark.slow) if MODELS.get(c.name).meta.get("raw_pixels")
         else c for c in testing.cases()]
IDS = [c.values[0].name if hasattr(c, "values") else c.name for c in CASES]


@pytest.fixture(scope="module")
def built():
    """One tiny model per case for the whole module (building is the slow part on JAX)."""
    cache = {}

    def get(case):
        if case.name not in cache:
            cache[case.name] = case.build()
        return cache[case.name]

    return get


def test_every_model_has_tiny_default_tasks_and_harness():
    for entry in MODELS:
        assert {"tiny", "default"} <= set(entry.presets), entry.name
        assert entry.meta.get("tasks"), entry.name


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward(case, built):
    testing.check_forward(case, built(case))


@pytest.mark.parametrize("name,task", [
    pytest.param(n, t, marks=pytest.mark.slow) if MODELS.get(n).meta.get("raw_pixels") else (n, t)
    for n, t in testing.task_cases()])
def test_other_task_forward(name, task):
    testing.check_forward(testing.make_case(name, task))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_one_train_step_changes_weights(case, built):
    testing.check_train_step(case, built(case))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_config_roundtrip(case, built):
    testing.check_config_roundtrip(case, built(case))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_load(case, built):
    testing.check_save_load(case, built(case))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mixed_precision_call(case):
    testing.check_mixed_precision(case)


# Loading builds every weight, which is slow in a fresh JAX process (each initializer
# compiles). These models use only stock Keras layers, or the same classes as a
# model that IS checked (named after each), so one per family group goes across.
CROSS_COVERED_BY = {
    "alexnet": "lenet5", "vgg": "lenet5", "cnn": "lenet5", "resnet": "lenet5",
    "rnn": "seq2seq", "transformer_classifier": "transformer", "gan": "dcgan",
    # keras.applications graphs: stock layers only
    "mobilenet_v2": "lenet5", "mobilenet_v3_small": "lenet5", "mobilenet_v3_large": "lenet5",
    "efficientnet_b0": "lenet5", "efficientnet_v2_b0": "lenet5",
}


def test_keras_files_load_on_another_backend(tmp_path, built):
    assert set(CROSS_COVERED_BY) | set(CROSS_COVERED_BY.values()) <= set(MODELS.names())
    cross = [c for c in testing.cases() if c.name not in CROSS_COVERED_BY]
    testing.write_cross_backend(tmp_path, cross, built)
    target = testing.other_backend()
    report = testing.check_cross_backend(tmp_path, target)
    assert set(report) == {c.name for c in cross}


def test_train_check_fails_on_a_weight_without_gradient():
    case = testing.make_case("mlp")

    def with_dead_branch():
        inp = keras.Input(case.build_args[0])
        x = keras.layers.Flatten()(inp)
        dead = keras.layers.Dense(4, name="dead")(x)
        dead = keras.layers.Lambda(keras.ops.stop_gradient)(dead)
        x = keras.layers.Concatenate()([x, dead])
        return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))

    case.build = with_dead_branch
    with pytest.raises(AssertionError, match="dead"):
        testing.check_train_step(case)
