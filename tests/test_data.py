import numpy as np
import pytest

from kdl.data import DataError, Normalizer, load_splits, make_tf_dataset


def test_digits_split_is_seeded_disjoint_and_complete():
    a = load_splits("digits", seed=3)
    b = load_splits("digits", seed=3)
    c = load_splits("digits", seed=4)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.input_shape == (8, 8, 1) and a.num_outputs == 10
    assert abs(len(a.test) - 0.15 * 1797) <= 1


def test_normalization_uses_training_statistics_only():
    s = load_splits("wine", seed=0)
    # Standardized on train: mean ~0, std ~1 there; val/test only approximately so.
    np.testing.assert_allclose(s.train.x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.train.x.std(axis=0), 1, atol=1e-4)
    assert np.abs(s.test.x.mean(axis=0)).max() > 1e-3


def test_image_normalization_is_per_channel_and_constant_features_pass():
    x = np.random.default_rng(0).normal(5, 2, size=(50, 4, 4, 3)).astype("float32")
    x[..., 2] = 7.0  # a constant channel
    n = Normalizer.fit(x)
    assert n.mean.shape == (3,) and n.std[2] == 1.0
    assert abs(n(x)[..., 0].mean()) < 1e-5
    again = Normalizer.from_dict(n.to_dict())
    np.testing.assert_array_equal(again(x), n(x))


def test_npz_with_given_splits(tmp_path):
    x = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20) % 2
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, train_idx=np.arange(12), val_idx=np.arange(12, 16),
             test_idx=np.arange(16, 20))
    s = load_splits("npz", path=str(path), normalize=False)
    np.testing.assert_array_equal(s.test.x, x[16:])
    assert s.label_names == ["0", "1"]


def test_csv_with_string_labels_and_regression(tmp_path):
    path = tmp_path / "d.csv"
    rows = "\n".join(f"{i},{i * 2},{'cat' if i % 2 else 'dog'},{i * 0.5}" for i in range(30))
    path.write_text("a,b,animal,value\n" + rows + "\n")
    s = load_splits("csv", path=str(path), target="animal")
    assert s.label_names == ["cat", "dog"] and s.input_shape == (3,)
    with pytest.raises(DataError, match="feature columns must be numeric"):
        load_splits("csv", path=str(path), target="value", task="regression")


def test_missing_file_and_bad_arrays(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits("npz", path=str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "bad.npz", inputs=np.zeros(3))
    with pytest.raises(DataError, match="expected 'x' and 'y'"):
        load_splits("npz", path=str(tmp_path / "bad.npz"))


def test_tf_dataset_batches_and_shuffles_with_seed():
    s = load_splits("iris", seed=0)
    ds = make_tf_dataset(s.train, 16, shuffle=True, seed=1)
    batches = list(ds.as_numpy_iterator())
    assert batches[0][0].shape == (16, 4)
    assert sum(len(b[1]) for b in batches) == len(s.train)
