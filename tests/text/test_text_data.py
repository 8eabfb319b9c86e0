"""Text datasets: the user's files (CSV/TSV/JSONL, folders), keras.datasets IMDB/Reuters
from a cache written here in Keras's format, the generated reviews, and bad rows."""

import json

import numpy as np
import pytest

from kdl.data import DataError, load_splits
from kdl.data.text import reviews, text_csv, text_folder

pytestmark = pytest.mark.once


def test_csv_quoted_newlines_utf8_and_bad_rows_counted(tmp_path):
    p = tmp_path / "t.csv"
    rows = ['text,label', '"a ""quoted"" text\nover two lines",pos', 'café crème,neg',
            ',pos', 'no label here,', 'plain,neg', 'more,pos']
    p.write_bytes(("\n".join(rows) + "\n").encode() + b"caf\xe9 latin-1,neg\n")
    raw = text_csv(str(p), text="text", target="label")
    assert list(raw.x[:2]) == ['a "quoted" text\nover two lines', "café crème"]
    assert raw.label_names == ["neg", "pos"]
    r = raw.info["data_report"]
    assert (r["rows"], r["empty_text_dropped"], r["missing_label_dropped"],
            r["non_utf8_replaced"], r["examples"]) == (7, 1, 1, 1, 5)
    assert raw.x[-1] == "caf\ufffd latin-1"


def test_tsv_and_jsonl(tmp_path):
    (tmp_path / "t.tsv").write_text("label\ttext\na\tone two\nb\tthree\na\tfour\nb\tfive\n")
    raw = text_csv(str(tmp_path / "t.tsv"), text="text", target="label")
    assert list(raw.x) == ["one two", "three", "four", "five"] and list(raw.y) == [0, 1, 0, 1]
    lines = [json.dumps({"t": f"text {i} 東京", "y": "yes" if i % 2 else "no"}) for i in range(6)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines), encoding="utf-8")
    raw = text_csv(str(tmp_path / "t.jsonl"), text="t", target="y")
    assert raw.x[0] == "text 0 東京" and raw.label_names == ["no", "yes"]


def test_bad_input_is_one_data_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nhello,a\nworld,a\nlonely,b\n")
    with pytest.raises(DataError, match="label 'b' has a single example"):
        text_csv(str(p), text="text", target="label")
    with pytest.raises(DataError, match="column 'body' is not in t.csv"):
        text_csv(str(p), text="body", target="label")
    with pytest.raises(DataError, match="does not exist"):
        text_csv(str(tmp_path / "nope.csv"), text="text", target="label")
    (tmp_path / "e.csv").write_text("text,label\n,a\n  ,b\n")
    with pytest.raises(DataError, match="no usable rows"):
        text_csv(str(tmp_path / "e.csv"), text="text", target="label")


def test_text_folder(tmp_path):
    for label, texts in {"neg": ["bad", "awful", ""], "pos": ["good", "great"]}.items():
        (tmp_path / label).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(t)
    raw = text_folder(str(tmp_path))
    assert raw.label_names == ["neg", "pos"] and sorted(raw.x) == ["awful", "bad", "good",
                                                                    "great"]
    assert raw.info["data_report"]["empty_text_dropped"] == 1


def _write_keras_cache(home, name, with_index=True):
    """Keras's cache layout: `<KERAS_HOME>/datasets/<name>.npz` (object arrays of lists of
    word-index ids; the loader adds `index_from`) and `<name>_word_index.json`."""
    d = home / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    index = {"good": 1, "bad": 2, "movie": 3, "not": 4}
    seqs = [[1, 3], [2, 3], [4, 1], [3, 2]] * 3
    xs = np.empty(len(seqs), dtype=object)
    xs[:] = seqs
    ys = np.array([1, 0, 0, 0] * 3)
    if name == "imdb":
        np.savez(d / "imdb.npz", x_train=xs[:8], y_train=ys[:8], x_test=xs[8:], y_test=ys[8:])
    else:
        np.savez(d / "reuters.npz", x=xs, y=ys)
    if with_index:
        (d / f"{name}_word_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("name", ["imdb", "reuters"])
def test_keras_datasets_from_the_cache(name, tmp_path, monkeypatch):
    from keras.src.backend import config
    from keras.src.utils import file_utils

    # KERAS_HOME as a fresh process would read it (Keras reads it once, at import).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    # Our cache file is not Keras's download, so its pinned hash cannot match: accept it
    # (the real loader and get_file then read the cache; nothing touches the network).
    monkeypatch.setattr(file_utils, "validate_file", lambda *a, **k: True)
    _write_keras_cache(tmp_path, name)
    splits = load_splits(name, seed=0, val_fraction=0.2, test_fraction=0.2,
                         tokenizer={"vocab_size": 20, "sequence_length": 4}, download=False)
    texts = set(splits.train.text) | set(splits.test.text) | set(splits.val.text)
    # (Keras drops the highest word id when num_words is None: "not good" reads "good".)
    assert {"good movie", "bad movie", "movie bad"} <= texts <= {"good movie", "bad movie",
                                                                 "movie bad", "good"}
    if name == "imdb":  # Keras's own test set (4 reviews) stays the test split
        assert len(splits.test) == 4 and splits.label_names == ["negative", "positive"]


def test_keras_dataset_offline_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _write_keras_cache(tmp_path, "imdb", with_index=False)
    with pytest.raises(DataError, match=r"place imdb_word_index.json in .*datasets"):
        load_splits("imdb", download=False)


def test_reviews_order_matters_for_the_labels():
    from kdl.data.text import _BAD, _GOOD

    raw = reviews(n=3000, seed=0)
    assert raw.label_names == ["negative", "positive", "question"]
    assert np.bincount(raw.y, minlength=3).min() > 500
    bags = {}
    for t, y in zip(raw.x, raw.y, strict=True):
        bags.setdefault(tuple(sorted(t.split())), set()).add(int(y))
    assert sum(len(v) > 1 for v in bags.values()) > 10  # same words, different labels
    contrast = [(t, y) for t, y in zip(raw.x, raw.y, strict=True) if " but " in t]
    assert len(contrast) > 500
    for t, y in contrast:  # the clause after "but" decides; swapped, the label flips
        second = t.split(" but ")[1].split()
        good = second[-1] in _GOOD
        assert second[-1] in _GOOD + _BAD and y == int(good != ("not" in second
                                                                 or "never" in second))
    np.testing.assert_array_equal(reviews(n=50, seed=3).y, reviews(n=50, seed=3).y)


def test_text_splits_tokenized_on_the_training_split():
    s = load_splits("reviews", n=300, tokenizer={"vocab_size": 120, "sequence_length": 12})
    assert s.train.x.dtype == np.int32 and s.train.x.shape[1] == 12
    assert len(s.train.text) == len(s.train) and s.info["tokenizer"]["kind"] == "wordpiece"
    assert s.info["vocab_size"] == len(s.info["tokenizer"]["vocabulary"])
