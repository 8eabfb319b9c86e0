"""Pretrain on digits 0-4, transfer to 5-9: frozen then unfrozen backbone, and the
transferred model beats training from scratch at equal epochs (slow test)."""

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


def _shifted(x, rng):
    """Each image moved by -1, 0 or +1 pixel in each direction (background fill)."""
    background = float(x.min())
    out = np.empty_like(x)
    dy, dx = rng.integers(-1, 2, len(x)), rng.integers(-1, 2, len(x))
    for i in range(len(x)):
        padded = np.pad(x[i], ((1, 1), (1, 1), (0, 0)), constant_values=background)
        out[i] = padded[1 + dy[i]:9 + dy[i], 1 + dx[i]:9 + dx[i]]
    return out


@pytest.mark.slow
def test_transfer_beats_scratch_at_equal_epochs(tmp_path):
    """5 labelled examples per new class, 6 epochs for both arms, 3 draws of the examples.

    Transfer: the CNN pretrained on 0-4 (with 1-pixel shifts), cut below its
    dense layer, a new head; 3 epochs head only (Adam 1e-2), then 3 epochs of
    the whole network (Adam 1e-3). Scratch: the same CNN with a 5-way head,
    randomly initialized, Adam for 6 epochs at each of two rates, scored at the
    better one (chosen on the held-out set: that favours scratch).
    """
    s = load_splits("digits", val_fraction=0.0, test_fraction=0.3, seed=0)
    x = np.concatenate([s.train.x, s.test.x])
    y = np.concatenate([s.train.y, s.test.y])
    low = y < 5
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    source = build_model("cnn", (8, 8, 1), 5, preset="default")
    source.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSS)
    x_a = np.concatenate([x[low], _shifted(x[low], rng), _shifted(x[low], rng)])
    source.fit(x_a, np.concatenate([y[low]] * 3), batch_size=64, epochs=25, verbose=0)
    source.save(tmp_path / "model.keras")

    transferred, scratch = [], []
    for seed in (0, 1, 2):
        pick = np.random.default_rng(100 + seed)
        few = np.concatenate([pick.choice(np.flatnonzero(y == c), 5, replace=False)
                              for c in range(5, 10)])
        held = np.setdiff1d(np.flatnonzero(y >= 5), few)
        x_b, y_b, x_t, y_t = x[few], y[few] - 5, x[held], y[held] - 5

        keras.utils.set_random_seed(seed)
        backbone = load_backbone(tmp_path, cut_at="dense")  # the conv features
        model = with_head(backbone, 5)
        weighted = len([layer for layer in backbone.layers if layer.weights])
        fine_tune(model, backbone, [Phase(epochs=3, learning_rate=1e-2),
                                    Phase(epochs=3, learning_rate=1e-3, top_n=weighted)],
                  x_b, y_b, loss=LOSS, batch_size=8)
        transferred.append(_accuracy(model, x_t, y_t))

        best = 0.0
        for lr in (3e-3, 1e-2):
            keras.utils.set_random_seed(seed)
            fresh = build_model("cnn", (8, 8, 1), 5, preset="default")
            fresh.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS)
            fresh.fit(x_b, y_b, batch_size=8, epochs=6, verbose=0)
            best = max(best, _accuracy(fresh, x_t, y_t))
        scratch.append(best)
    print(f"transferred {np.round(transferred, 3)} scratch {np.round(scratch, 3)}")
    assert np.mean(transferred) > np.mean(scratch) + 0.02
    assert sum(t > s for t, s in zip(transferred, scratch, strict=True)) >= 2
