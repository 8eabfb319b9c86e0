"""The text application end to end through the CLI: a user's CSV with the default text
recipe -> a verified bundle -> predict --text; bad input is one line, exit 2, no run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kdl.config import ConfigError
from kdl.data.text import reviews
from pipelines.config import load_config


def _write_csv(path, n=400, seed=0):
    import csv

    raw = reviews(n=n, seed=seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "label"])
        for i, (t, y) in enumerate(zip(raw.x, raw.y, strict=True)):
            w.writerow([i, t, raw.label_names[y]])
        w.writerow([n, "", "positive"])  # an empty text: dropped and counted
    return raw


def _cli(args, tmp_path, timeout=900):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)


FAST = ["train.epochs=10", "model.preset=tiny", "model.params={model_dim: 16, mlp_dim: 32}",
        "tokenizer.vocab_size=300", "tokenizer.sequence_length=16", "train.verbose=0",
        "export.formats=[tflite_fp32,tflite_dynamic]"]


@pytest.mark.slow  # a full run + verify + predict, three processes (about a minute)
def test_user_csv_through_the_recipe_to_a_verified_bundle_and_predict(tmp_path):
    _write_csv(tmp_path / "my_texts.csv")
    sets = ["data.name=text_csv", "data.path=my_texts.csv", "data.text=text",
            "data.target=label", f"output_dir={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *FAST]
    proc = _cli(["run", "reviews_transformer", *[a for s in sets for a in ("--set", s)]],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data: 400 of 401 rows used; empty text dropped: 1" in proc.stdout
    run_dir = next((tmp_path / "out").glob("reviews_transformer/*"))
    bundle = run_dir / "bundle"
    contract = json.loads((bundle / "contract.json").read_text())
    assert contract["preprocessing"]["tokenizer"]["kind"] == "wordpiece"
    assert (bundle / "vocabulary.txt").is_file()
    check = _cli(["verify-bundle", str(bundle)], tmp_path, 300)
    assert check.returncode == 0 and "PASS tokenizer wordpiece" in check.stdout
    # predict --text agrees with the bundle's own golden outputs (the model's labels)
    golden = json.loads((bundle / "golden.json").read_text())
    texts = golden["text"]["strings"][:3]
    pred = _cli(["predict", str(run_dir), "--json", "--model", "model_fp32.tflite",
                 *[a for t in texts for a in ("--text", t)]], tmp_path, 300)
    assert pred.returncode == 0, pred.stderr
    want = np.asarray(golden["expected"]["model_fp32.tflite"]["outputs"][0]["data"]).argmax(1)
    got = [p["top"][0]["class"] for p in json.loads(pred.stdout)["predictions"]]
    assert got == list(want[:3])


@pytest.mark.slow  # the recipe with byte_pair: run (train + export), verify-bundle, predict
def test_byte_pair_recipe_run_gives_a_bundle_whose_strings_replay(tmp_path):
    sets = [f"output_dir={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *[s for s in FAST if not s.startswith("tokenizer.vocab_size")],
            "tokenizer.kind=byte_pair", "tokenizer.vocab_size=600", "data.params={n: 900}"]
    proc = _cli(["run", "reviews_transformer", "--stages", "train,export",
                 *[a for s in sets for a in ("--set", s)]], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "out").glob("reviews_transformer/*"))
    bundle = run_dir / "bundle"
    tok = json.loads((bundle / "contract.json").read_text())["preprocessing"]["tokenizer"]
    assert tok["kind"] == "byte_pair" and tok["vocab_size"] > 5 + 256
    assert (bundle / "vocab.json").is_file() and (bundle / "merges.txt").is_file()
    check = _cli(["verify-bundle", str(bundle)], tmp_path, 300)
    assert check.returncode == 0 and "PASS tokenizer byte_pair" in check.stdout, check.stdout
    pred = _cli(["predict", str(run_dir), "--json", "--text", "the food was not good"],
                tmp_path, 300)
    assert pred.returncode == 0 and json.loads(pred.stdout)["predictions"][0]["top"], pred.stderr


BAD = [
    (["data.path=missing.csv"], "does not exist"),
    (["data.text=body"], "column 'body' is not in my_texts.csv"),
    (["model.name=cnn"], "does not take token ids"),
    (["tokenizer.kind=byte_pair", "tokenizer.vocab_size=200"],
     "byte_pair needs tokenizer.vocab_size > 261"),
    (["tokenizer.kind=sentencepiece", "tokenizer.preset=."],
     "loads WordPiece or byte_pair vocabularies"),
    (["tokenizer.preset=/nope"], "is not a local directory"),
    (["data.path=one.csv"], "label 'rare' has a single example"),
]


def _bad_setup(tmp_path, monkeypatch):
    _write_csv(tmp_path / "my_texts.csv", n=30)
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\nc,rare\n")
    monkeypatch.chdir(tmp_path)
    return ["data.name=text_csv", "data.path=my_texts.csv", "data.text=text",
            "data.target=label", f"output_dir={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]


@pytest.mark.once
@pytest.mark.parametrize("sets,message", BAD)
def test_bad_text_input_fails_the_config_check(tmp_path, monkeypatch, sets, message):
    base = _bad_setup(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=message):
        load_config("reviews_transformer", base + sets)


# each case a real `python -m pipelines run` (~10 s of Keras import each): the config check
# (missing file) and the data check (the CSV read) in the fast pass, the others `slow`
_FAST_CLI = {"data.path=missing.csv", "data.path=one.csv"}


@pytest.mark.once
@pytest.mark.parametrize("sets,message", [
    pytest.param(s, m, id=s[0], marks=() if s[0] in _FAST_CLI else pytest.mark.slow)
    for s, m in BAD])
def test_bad_text_input_is_one_line_exit_2_before_any_run(tmp_path, monkeypatch, sets,
                                                          message):
    base = _bad_setup(tmp_path, monkeypatch)
    proc = _cli(["run", "reviews_transformer",
                 *[a for s in base + sets for a in ("--set", s)]], tmp_path, 300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    # exactly one line: no traceback, no TensorFlow/absl C++ start-up lines in front of it
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == "", proc.stdout  # nothing started: no data summary, no run line
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.once
def test_the_recipe_loads_and_text_config_is_checked():
    cfg = load_config("reviews_transformer")
    assert cfg.data.name == "reviews" and cfg.tokenizer.kind == "wordpiece"
    assert load_config("reviews_transformer", ["tokenizer.kind=byte_pair"]).tokenizer.kind \
        == "byte_pair"  # learned on the training split, no longer refused
    with pytest.raises(ConfigError, match="not a text dataset"):
        load_config("digits_cnn", ["data.text=body"])
    with pytest.raises(ConfigError, match="tokenizer.preset"):
        load_config("reviews_transformer", ["model.name=bert_classifier",
                                            "model.params={checkpoint: /nope}"])


@pytest.mark.slow  # fine-tunes a (tiny) BERT through train, export and the bundle gate
@pytest.mark.parametrize("arch", ["bert", "distil_bert"])
def test_bert_family_fine_tuned_from_a_local_kerashub_preset(tmp_path, arch):
    """A tiny pretrained checkpoint written here in KerasHub's preset layout (backbone +
    tokenizer), fine-tuned with a kdl head; the bundle's tokenizer is the preset's."""
    import keras
    import keras_hub

    from kdl.data.tokenizers import fit_tokenizer
    from pipelines.run import run_pipeline
    from pipelines.verify_bundle import verify_bundle

    raw = reviews(n=600, seed=1)
    vocab = fit_tokenizer(raw.x, vocab_size=300).vocabulary()
    preset = tmp_path / "preset"
    cls = {"bert": keras_hub.models.BertBackbone, "distil_bert":
           keras_hub.models.DistilBertBackbone}[arch]
    backbone = cls(vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=16,
                   intermediate_dim=32, max_sequence_length=32)
    backbone.save_to_preset(str(preset))
    tok_cls = {"bert": keras_hub.tokenizers.BertTokenizer,
               "distil_bert": keras_hub.tokenizers.DistilBertTokenizer}[arch]
    tok_cls(vocabulary=vocab, lowercase=True).save_to_preset(str(preset))
    weights = keras.ops.convert_to_numpy(backbone.token_embedding.embeddings)

    cfg = load_config("reviews_transformer", [
        f"output_dir={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
        "model.name=bert_classifier", "model.preset=tiny",
        f"model.params={{backbone: {arch}, checkpoint: {preset}}}",
        f"tokenizer.preset={preset}", "tokenizer.sequence_length=24",
        "tokenizer.start_token='[CLS]'", "tokenizer.end_token='[SEP]'", "train.epochs=10",
        "train.verbose=0", "train.learning_rate=0.003", "data.params={n: 900}",
        # full int8 passes the gate since the export traces a bounded mask fill
        "export.formats=[tflite_fp32, tflite_dynamic, tflite_int8]"])
    run_dir, results, _ = run_pipeline(cfg, log=lambda *_: None)
    assert results["train"]["test_accuracy"] > 0.5  # three classes: chance is 1/3
    assert verify_bundle(run_dir / "bundle")[0] == 0
    contract = json.loads((run_dir / "bundle" / "contract.json").read_text())
    tok = contract["preprocessing"]["tokenizer"]
    assert tok["start_token"] == "[CLS]" and tok["vocab_size"] == len(vocab)
    # the fine-tuned embeddings started from the checkpoint's: 10 epochs move them (r 0.47
    # for both archs, 2026-11-29), a fresh initialisation would give r ~ 0 (sd ~0.015)
    model = keras.saving.load_model(run_dir / "model.keras")
    hub = next(layer for layer in model.layers if isinstance(layer, cls))
    tuned = keras.ops.convert_to_numpy(hub.token_embedding.embeddings)
    assert np.corrcoef(tuned.ravel(), weights.ravel())[0, 1] > 0.3


def _zero_share_of_int8_table(path, shape):
    """Share of the int8 file's `shape` weight tensor (the embedding table) that is at its
    zero point: pruned entries stay exactly zero through PTQ."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    [table] = [d for d in interp.get_tensor_details()
               if d["dtype"] == np.int8 and tuple(d["shape"]) == shape]
    q = interp.get_tensor(table["index"])
    return float(np.mean(q == table["quantization_parameters"]["zero_points"][0]))


@pytest.mark.slow  # train -> prune -> QAT -> export + bundle gate, one process (~3 min)
def test_the_text_recipe_prunes_and_quantizes_through_the_gates(tmp_path):
    """The default text recipe with the prune and quantize stages: the embedding table is
    pruned like a kernel (to the target), QAT + full int8 keep the accuracy, and the
    pruned QAT model passes the export gate and verify-bundle in fp32 and int8."""
    from pipelines.run import run_pipeline
    from pipelines.verify_bundle import verify_bundle

    cfg = load_config("reviews_transformer", [
        f"output_dir={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
        "data.params={n: 1500}", "data.batch_size=32", "train.learning_rate=0.003",
        "model.preset=tiny",
        "model.params={model_dim: 32, num_heads: 2, mlp_dim: 64}", "tokenizer.vocab_size=300",
        "tokenizer.sequence_length=24", "train.epochs=12", "train.verbose=0",
        "prune.epochs=4", "quantize.epochs=1", "export.formats=[tflite_fp32, tflite_int8]",
        "stages=[train, prune, quantize, export]"])
    run_dir, results, _ = run_pipeline(cfg, log=lambda *_: None)
    dense = results["train"]["test_accuracy"]
    # `reviews` needs word order (a bag of words: ~0.78): a real model first (TF 0.9+,
    # JAX 0.884 with these settings, 2026-11-29)
    assert dense >= 0.8, dense
    prune = json.loads((run_dir / "compressed" / "prune_report.json").read_text())
    assert prune["target_check"]["met"]
    assert abs(prune["layers"]["source_embedding/embeddings"] - 0.8) < 0.005  # pruned, 80%
    assert prune["test_accuracy"] >= dense - 0.05, prune["test_accuracy"]
    report = json.loads((run_dir / "compressed" / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    for name in ("dense int8 (PTQ)", "pruned int8 (PTQ)", "pruned int8 (QAT)"):
        assert np.isfinite(rows[name]["accuracy"]), name
    assert rows["dense int8 (PTQ)"]["accuracy"] >= dense - 0.01  # full int8 on text
    assert rows["pruned int8 (QAT)"]["accuracy"] >= dense - 0.05
    assert results["export"]["source"] == "compressed/model_qat.keras"  # pruned + QAT ships
    export = json.loads((run_dir / "export" / "report.json").read_text())
    assert export["passed"] and all(r["passed"] for r in export["formats"].values())
    assert verify_bundle(run_dir / "bundle")[0] == 0
    vocab = len((run_dir / "bundle" / "vocabulary.txt").read_text("utf-8").split("\n")) - 1
    zeros = _zero_share_of_int8_table(run_dir / "bundle" / "model_int8.tflite", (vocab, 32))
    assert zeros >= 0.79, zeros  # the shipped int8 table keeps the pruned zeros


@pytest.mark.once
@pytest.mark.parametrize("name", ["transformer_classifier", "bag_of_embeddings"])
def test_embedding_tables_are_pruned_unless_excluded(name):
    """Magnitude pruning takes a text model's embedding table like a kernel;
    `prune.exclude: [".*embedding"]` (docs/text.md) keeps it dense."""
    from kdl.compress.pruning import prunable_weights
    from kdl.models import build_model

    model = build_model(name, (8,), 3, preset="tiny", vocab_size=20)
    paths = {v.path for _, v in prunable_weights(model)}
    tables = {p for p in paths if p.endswith("/embeddings")}
    assert len(tables) == 1, paths
    kept = {v.path for _, v in prunable_weights(model, exclude=[".*embedding"])}
    assert kept == paths - tables and kept  # the table alone is left dense
