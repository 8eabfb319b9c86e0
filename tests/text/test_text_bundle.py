"""A text model's bundle: vocabulary file + tokenizer block, golden strings replayed by
verify-bundle through the reference tokenizer, predict --text; and the ways it must fail."""

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from kdl.data import load_splits
from kdl.data.tokenizers import HARD_STRINGS, tokenize, tokenizer_from_spec
from kdl.export import export
from kdl.export.bundle import write_bundle
from kdl.models import build_model
from pipelines.predict import predict
from pipelines.verify_bundle import verify_bundle

pytestmark = [pytest.mark.once, pytest.mark.tf_only]  # export converts with TensorFlow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text_bundle")
    s = load_splits("reviews", n=600, seed=0,
                    tokenizer={"vocab_size": 200, "sequence_length": 16})
    keras.utils.set_random_seed(0)
    model = build_model("bag_of_embeddings", s.input_shape, 3, preset="tiny",
                        vocab_size=s.info["vocab_size"], embed_dim=16, hidden=16)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(s.train.x, s.train.y, epochs=8, batch_size=32, verbose=0)
    paths = export(model, tmp / "export", ["tflite_fp32", "tflite_int8"],
                   {"tflite_int8": {"representative": s.train.x[:100]}})
    strings = list(s.test.text[:6]) + HARD_STRINGS
    ids = tokenize(tokenizer_from_spec(s.info["tokenizer"]), strings)
    out = write_bundle(tmp / "bundle", paths, ids, label_names=s.label_names,
                       reference_outputs=model.predict(ids, verbose=0), text=strings,
                       tokenizer=s.info["tokenizer"])
    return out, s, model


def _copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "copy")


def test_bundle_carries_the_tokenizer_and_verifies(bundle):
    path, s, _ = bundle
    contract = json.loads((path / "contract.json").read_text())
    tok = contract["preprocessing"]["tokenizer"]
    assert tok["kind"] == "wordpiece" and tok["vocabulary_file"] == "vocabulary.txt"
    assert [st["step"] for st in tok["normalization"]] == [
        "split_cjk", "strip_accents", "split", "lowercase", "wordpiece"]
    assert (path / "vocabulary.txt").read_text().split("\n")[:-1] == \
        s.info["tokenizer"]["vocabulary"]
    for f in contract["files"].values():
        assert f["inputs"][0]["dtype"] == "int32" and f["inputs"][0]["shape"] == [1, 16]
    golden = json.loads((path / "golden.json").read_text())
    assert "" in golden["text"]["strings"] and len(golden["text"]["strings"]) == 6 + len(
        HARD_STRINGS)
    code, lines = verify_bundle(path)
    assert code == 0, lines
    assert lines[0].startswith("PASS tokenizer wordpiece")


def test_wrong_golden_ids_fail(bundle, tmp_path):
    path = _copy(bundle[0], tmp_path)
    golden = json.loads((path / "golden.json").read_text())
    golden["inputs"][0]["data"][0][1] += 1  # the tokenizer's ids for string 0, changed
    (path / "golden.json").write_text(json.dumps(golden))
    code, lines = verify_bundle(path)
    assert code == 1 and "reference tokenizer gives id" in "\n".join(lines)


def test_contract_missing_a_step_fails(bundle, tmp_path):
    path = _copy(bundle[0], tmp_path)
    contract = json.loads((path / "contract.json").read_text())
    steps = contract["preprocessing"]["tokenizer"]["normalization"]
    contract["preprocessing"]["tokenizer"]["normalization"] = [
        st for st in steps if st["step"] != "lowercase"]
    golden = json.loads((path / "golden.json").read_text())
    golden["text"]["strings"][0] = golden["text"]["strings"][0].upper()
    (path / "contract.json").write_text(json.dumps(contract))
    (path / "golden.json").write_text(json.dumps(golden))
    assert verify_bundle(path)[0] == 1


@pytest.mark.parametrize("change", ["vocabulary", "unknown_step", "sequence_length", "text"])
def test_malformed_text_bundles(bundle, tmp_path, change):
    path = _copy(bundle[0], tmp_path)
    contract = json.loads((path / "contract.json").read_text())
    golden = json.loads((path / "golden.json").read_text())
    tok = contract["preprocessing"]["tokenizer"]
    if change == "vocabulary":
        (path / "vocabulary.txt").write_text("[PAD]\n")
    elif change == "unknown_step":
        tok["normalization"].insert(0, {"step": "stem", "how": "?"})
    elif change == "sequence_length":
        tok["sequence_length"] = 32
    else:
        golden["text"]["strings"] = golden["text"]["strings"][:-1]
    (path / "contract.json").write_text(json.dumps(contract))
    (path / "golden.json").write_text(json.dumps(golden))
    code, lines = verify_bundle(path)
    assert code == 2, lines


def test_predict_text_gives_the_keras_label(bundle, tmp_path):
    path, s, model = bundle
    texts = list(s.test.text[:5])
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(texts[2:]) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pipelines", "predict", str(path), "--json", "--model",
           "model_fp32.tflite", "--lines", str(lines)]
    for t in texts[:2]:
        cmd += ["--text", t]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    want = model.predict(s.test.x[:5], verbose=0).argmax(1)
    assert [p["top"][0]["class"] for p in result["predictions"]] == list(want)
    assert [p["input"] for p in result["predictions"]] == texts
    bad = subprocess.run([sys.executable, "-m", "pipelines", "predict", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,vocab_size,files", [
    ("sentencepiece", 70, ["sentencepiece_model_file"]),
    ("byte_pair", 300, ["vocabulary_file", "merges_file"])])
def test_learned_subword_bundle_replays_its_strings(tmp_path, kind, vocab_size, files):
    """verify-bundle replays golden strings through the plain-Python SentencePiece (read
    from the bundled `.model` file) or byte-level BPE (vocab.json + merges.txt), and a
    changed golden id fails it."""
    s = load_splits("reviews", n=300, seed=0,
                    tokenizer={"kind": kind, "vocab_size": vocab_size, "sequence_length": 16})
    keras.utils.set_random_seed(0)
    model = build_model("bag_of_embeddings", s.input_shape, 3, preset="tiny",
                        vocab_size=s.info["vocab_size"])
    paths = export(model, tmp_path / "export", ["tflite_fp32"])
    strings = list(s.test.text[:4]) + HARD_STRINGS
    ids = tokenize(tokenizer_from_spec(s.info["tokenizer"]), strings)
    path = write_bundle(tmp_path / "bundle", paths, ids, label_names=s.label_names,
                        reference_outputs=model.predict(ids, verbose=0), text=strings,
                        tokenizer=s.info["tokenizer"])
    tok = json.loads((path / "contract.json").read_text())["preprocessing"]["tokenizer"]
    assert all((path / tok[f]).is_file() for f in files)
    code, lines = verify_bundle(path)
    assert code == 0 and lines[0].startswith(f"PASS tokenizer {kind}"), lines
    golden = json.loads((path / "golden.json").read_text())
    # predict --text tokenizes with the reference from the bundle's files (the .model file,
    # vocab.json + merges.txt) and gives the file's own golden outputs
    got = [p["top"][0]["class"] for p in predict(path, strings[:3])["predictions"]]
    want = np.asarray(golden["expected"]["model_fp32.tflite"]["outputs"][0]["data"]).argmax(1)
    assert got == list(want[:3])
    golden["inputs"][0]["data"][0][1] += 1
    (path / "golden.json").write_text(json.dumps(golden))
    code, lines = verify_bundle(path)
    assert code == 1 and "reference tokenizer gives id" in "\n".join(lines)
