"""Pretrain on digits 0-4, transfer to 5-9 with frozen then partly unfrozen backbone.

Not shown here: that the transferred model beats training from scratch at
equal epochs. On 8x8 digits it did not, robustly (see docs/training.md):
scratch training on 10-40 examples is already strong, and features learned on
0-4 carry less than the raw pixels.
"""

import keras
import numpy as np
import pytest

from kdl.data import load_splits
from kdl.models import build_model
from kdl.transfer import Phase, fine_tune, load_backbone, set_trainable, with_head

LOSS = "sparse_categorical_crossentropy"


def _digits():
    s = load_splits("digits", val_fraction=0.0, test_fraction=0.3, seed=0)
    x = np.concatenate([s.train.x, s.test.x])
    y = np.concatenate([s.train.y, s.test.y])
    low, high = y < 5, y >= 5
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(high))
    few, held = idx[:40], idx[40:]  # 40 labelled examples of the new classes
    return (x[low], y[low]), (x[few], y[few] - 5), (x[held], y[held] - 5)


@pytest.fixture(scope="module")
def digits():
    return _digits()


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


def test_transfer_phases_freeze_and_learn_new_classes(digits, tmp_path):
    (x_a, y_a), (x_b, y_b), (x_t, y_t) = digits
    keras.utils.set_random_seed(0)
    source = build_model("mlp", (8, 8, 1), 5, preset="default", dropout=0.0)
    source.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSS)
    source.fit(x_a, y_a, batch_size=64, epochs=8, verbose=0)
    source.save(tmp_path / "model.keras")

    backbone = load_backbone(tmp_path)  # a kdl run directory holding model.keras
    frozen_before = [keras.ops.convert_to_numpy(w).copy() for w in backbone.weights]
    keras.utils.set_random_seed(1)
    model = with_head(backbone, 5)
    phases = [Phase(epochs=8, learning_rate=1e-2),  # head only
              Phase(epochs=8, learning_rate=1e-3, top_n=1)]  # + last hidden layer
    report = fine_tune(model, backbone, phases, x_b, y_b, loss=LOSS, batch_size=8)
    assert report[0]["trainable"] == [] and report[1]["trainable"] == ["dense_1"]
    first = backbone.get_layer("dense_0")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first.kernel), frozen_before[0])

    # The opened layer moved; the new head learned the new classes from 40 examples.
    second = backbone.get_layer("dense_1")
    assert not np.allclose(keras.ops.convert_to_numpy(second.kernel), frozen_before[2])
    accuracy = _accuracy(model, x_t, y_t)
    print(f"transferred: {accuracy:.3f} on held-out 5-9")
    assert accuracy > 0.7


def test_set_trainable_by_name_and_errors():
    model = build_model("mlp", (4,), 3, preset="default", batch_norm=True)
    backbone = keras.Model(model.inputs, model.get_layer("head").input)
    assert set_trainable(backbone, names=["dense_1"]) == ["dense_1"]
    assert set_trainable(backbone, top_n=2) == ["dense_1"]  # top 2 weighted: dense_1, bn_1
    assert set(set_trainable(backbone, top_n=2, train_batchnorm=True)) == {"dense_1", "bn_1"}
    with pytest.raises(ValueError, match="no backbone layer"):
        set_trainable(backbone, names=["block9"])
    with pytest.raises(FileNotFoundError, match="model.keras"):
        load_backbone("/nonexistent/run")
