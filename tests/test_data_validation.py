"""Bad data is refused with a message naming what and where, never trained on silently
(docs/errors.md lists each case and what the CLI answers)."""

import numpy as np
import pytest

from kdl.data import DataError, load_splits
from kdl.data.core import class_ids

pytestmark = pytest.mark.once  # NumPy only: backend-independent


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _table(n=40, features=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype("float32"), np.arange(n) % 2


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_input_is_refused_naming_count_split_and_place(tmp_path, value):
    x, y = _table()
    x[7, 2] = value
    x[9, 0] = value
    path = _npz(tmp_path, x=x, y=y)
    with pytest.raises(DataError) as e:
        load_splits("npz", path=path)
    msg = str(e.value)
    assert msg.startswith("2 examples hold NaN or inf (train ")
    assert "x[7], feature 2" in msg or "x[9], feature 0" in msg
    assert "data.nonfinite=drop" in msg


def test_dropping_nonfinite_inputs_is_counted_and_the_statistics_stay_finite(tmp_path):
    x, y = _table()
    x[[3, 11, 30], 1] = [np.nan, np.inf, -np.inf]
    s = load_splits("npz", path=_npz(tmp_path, x=x, y=y), nonfinite="drop")
    assert sum(s.dropped.values()) == 3 and set(s.dropped) == {"train", "val", "test"}
    assert len(s.train) + len(s.val) + len(s.test) == 37
    assert np.isfinite(s.normalizer.mean).all() and np.isfinite(s.normalizer.std).all()
    assert all(np.isfinite(p.x).all() for p in (s.train, s.val, s.test))
    with pytest.raises(DataError, match="nonfinite must be one of"):
        load_splits("npz", path=_npz(tmp_path, x=x, y=y), nonfinite="ignore")


def test_nonfinite_regression_targets_and_csv_cells_are_named(tmp_path):
    x, _ = _table()
    y = x.sum(1)
    y[5] = np.nan
    with pytest.raises(DataError, match=r"target = nan"):
        load_splits("npz", path=_npz(tmp_path, x=x, y=y), task="regression")
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
                    + "inf,1,0\n")
    with pytest.raises(DataError, match=r"1 examples hold NaN or inf .*line 22, feature 0 = inf"):
        load_splits("csv", path=str(path), target="label")


def test_image_nonfinite_position_is_named(tmp_path):
    x = np.zeros((30, 4, 4, 1), "float32") + np.arange(30)[:, None, None, None]
    x[4, 2, 3, 0] = np.nan
    with pytest.raises(DataError, match=r"x\[4\], position \(2, 3, 0\) = nan"):
        load_splits("npz", path=_npz(tmp_path, x=x, y=np.arange(30) % 3))


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, -1, 2] * 10), r"labels are negative \(first: x\[2\] has -1\)"),
    (np.array([0.0, 1.0, 0.5, 1.0] * 10), r"not whole numbers \(first: x\[2\] has 0.5\)"),
    (np.array([0.0, 1.0, np.nan, 1.0] * 10), "not whole numbers"),
    (np.zeros(40, "int64"), "whole dataset holds one class only"),
])
def test_label_rules_are_enforced_with_one_message(tmp_path, labels, message):
    x, _ = _table()
    with pytest.raises(DataError, match=message):
        load_splits("npz", path=_npz(tmp_path, x=x, y=labels))


def test_string_labels_map_to_classes_and_the_mapping_is_the_label_names(tmp_path):
    x, _ = _table()
    y = np.array(["cat", "dog", "ant", "dog"] * 10)
    s = load_splits("npz", path=_npz(tmp_path, x=x, y=y), normalize=False)
    assert s.label_names == ["ant", "cat", "dog"]
    rows = [int(np.flatnonzero((x == r).all(1))[0]) for r in s.train.x[:5]]
    assert [s.label_names[c] for c in s.train.y[:5]] == [str(y[r]) for r in rows]
    ids, names = class_ids(np.array(["10", "-1", "2"]))
    assert names == ["-1", "2", "10"] and ids.tolist() == [2, 0, 1]
    ids, names = class_ids(np.array([1.0, 0.0, 2.0]))  # whole floats are class ids
    assert ids.dtype == np.int32 and names == ["0", "1", "2"]
    with pytest.raises(DataError, match="labels are >= 2, the number of label_names"):
        class_ids(np.array([0, 1, 2]), ["a", "b"])


def test_object_arrays_truncated_and_non_numeric_npz_are_data_errors(tmp_path):
    x, y = _table()
    ragged = np.empty(40, dtype=object)
    ragged[:] = [[1.0] * (i % 3 + 1) for i in range(40)]
    with pytest.raises(DataError, match="object arrays"):
        load_splits("npz", path=_npz(tmp_path, x=ragged, y=y))
    good = _npz(tmp_path, "good.npz", x=x, y=y)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(open(good, "rb").read()[:300])
    with pytest.raises(DataError, match="not a readable .npz"):
        load_splits("npz", path=str(cut))
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_splits("npz", path=str(tmp_path / "empty.npz"))
    with pytest.raises(DataError, match="x holds <U1 values \\(strings\\)"):
        load_splits("npz", path=_npz(tmp_path, x=np.array([["a"]] * 40), y=y))


def test_readme_layout_without_val_carves_it_from_train(tmp_path):
    x, y = _table(60)
    path = _npz(tmp_path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    s = load_splits("npz", path=path, normalize=False, val_fraction=0.2)
    np.testing.assert_array_equal(s.test.x, x[40:])  # the file's test part, untouched
    assert len(s.val) == 12 and len(s.train) == 28  # val_fraction: a share of all 60
    train_rows = {tuple(r) for r in x[:40]}
    assert all(tuple(r) in train_rows for r in np.concatenate([s.train.x, s.val.x]))


def test_an_impossible_split_says_what_is_wrong(tmp_path):
    x, y = _table(4)
    with pytest.raises(DataError) as e:
        load_splits("npz", path=_npz(tmp_path, x=x, y=np.array([0, 1, 0, 1])),
                    val_fraction=0.4, test_fraction=0.4)
    assert str(e.value) == ("cannot split 4 examples: val 2 (data.val_fraction=0.4) + test 2 "
                            "(data.test_fraction=0.4) leave 0 for training (needs >= 1). "
                            "Lower the fractions or add data")
    with pytest.raises(DataError, match="indices must be in 0..3"):
        load_splits("npz", path=_npz(tmp_path, x=x, y=y, train_idx=[0, 1, 9]))


def test_csv_ragged_unreadable_and_non_numeric_rows_are_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,4\n5,6,1\n")
    with pytest.raises(DataError, match=r"1 rows do not have the header's 3 cells "
                                        r"\(first: line 3 has 2\)"):
        load_splits("csv", path=str(path), target="label")
    path.write_text("a,b,label\n1,2,0\n3,x,1\n")
    with pytest.raises(DataError, match=r"line 3, column 'b': 'x' is not a number"):
        load_splits("csv", path=str(path), target="label")
    path.write_bytes(b"a,b,label\n1,\xff\xfe,0\n")
    with pytest.raises(DataError, match="not a readable UTF-8 CSV"):
        load_splits("csv", path=str(path), target="label")
