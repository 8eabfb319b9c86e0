"""Two-input data through the pipeline: the generated reversal task (seq2seq),
teacher-forced and greedy-decode scores, fixed-length greedy decoding, config checks;
digits with generated captions (CLIP) and its linear probe.

Every test here is `once` (the TensorFlow pass of `make test`): what they check is
the pipeline's logic, not a backend's numerics, and on JAX the reference decoder
(a new input shape per step, a compile each) and the stage runs cost minutes.
Training two-input models on every backend is the shared harness's job
(`tests/models/test_harness.py`: seq2seq, transformer, clip); this file passed on
JAX and PyTorch when written."""

import json

import keras
import numpy as np
import pytest

from kdl.data import DataError, load_splits, make_tf_dataset
from kdl.models import build_model
from kdl.models.decoding import greedy_decode
from kdl.training import score, sequence_scores
from pipelines.config import ConfigError, load_config


def growing_decode(model, source, start_id, steps):
    """The reference: the decoder input grows by the argmax token each step."""
    tokens = np.full((len(source), 1), start_id, "int32")
    for _ in range(steps):
        probs = keras.ops.convert_to_numpy(model([source, tokens], training=False))
        tokens = np.concatenate([tokens, probs[:, -1].argmax(-1)[:, None].astype("int32")], 1)
    return tokens[:, 1:]


@pytest.mark.once
def test_reverse_tokens_is_seeded_and_teacher_forced():
    a = load_splits("reverse_tokens", normalize=False, n=300, seed=0)
    b = load_splits("reverse_tokens", normalize=False, n=300, seed=0)
    c = load_splits("reverse_tokens", normalize=False, n=300, seed=0, length=6)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    source, target_in = a.train.x
    assert a.input_shape == ((8,), (8,)) and len(a.train) == len(a.train.y) == 210
    assert source.dtype == target_in.dtype == np.int32
    np.testing.assert_array_equal(a.train.y, source[:, ::-1])
    np.testing.assert_array_equal(target_in[:, 0], a.info["start_id"])
    np.testing.assert_array_equal(target_in[:, 1:], a.train.y[:, :-1])
    assert source.min() >= 2 and a.num_outputs == source.max() + 1 == 12
    (xs, y), = make_tf_dataset(a.test, 7).take(1).as_numpy_iterator()
    assert len(xs) == 2 and xs[0].shape == xs[1].shape == y.shape == (7, 8)


@pytest.mark.once
def test_token_inputs_are_not_standardized():
    with pytest.raises(DataError, match="data.normalize=false"):
        load_splits("reverse_tokens", n=50)


@pytest.mark.once
def test_config_refuses_what_two_input_data_cannot_do():
    base = ["data.name=reverse_tokens", "model.name=seq2seq", "stages=[train]"]
    with pytest.raises(ConfigError, match="data.normalize=false"):
        load_config(None, base)
    ok = [*base, "data.normalize=false"]
    assert load_config(None, [*ok, "data.params.n=100"]).data.params == {"n": 100}
    with pytest.raises(ConfigError, match="set stages=\\[train\\]"):
        load_config(None, [*ok, "stages=[train, export]"])
    with pytest.raises(ConfigError, match="no argument 'lenght'.*'length'"):
        load_config(None, [*ok, "data.params.lenght=5"])
    with pytest.raises(ConfigError, match="train.checkpoint=false"):
        load_config(None, [*ok, "train.checkpoint=true"])


@pytest.mark.once
def test_sequence_scores_count_tokens_and_whole_sequences():
    y = np.array([[2, 3, 4], [5, 6, 7]])
    pred = np.array([[2, 3, 4], [5, 0, 7]])
    assert sequence_scores(y, pred) == {"token_accuracy": 5 / 6, "sequence_accuracy": 0.5}
    probs = np.eye(8, dtype="float32")[pred] * 0.9 + 0.1 / 8
    s = score("classification", y, probs)
    assert s["accuracy"] == pytest.approx(5 / 6) and s["sequence_accuracy"] == 0.5
    p_true = np.where(pred == y, 0.9 + 0.1 / 8, 0.1 / 8)
    assert s["loss"] == pytest.approx(-np.log(p_true).mean(), rel=1e-5)


@pytest.mark.once
@pytest.mark.parametrize("name", ["seq2seq", "transformer"])
def test_fixed_length_greedy_decode_equals_the_growing_one(name):
    keras.utils.set_random_seed(0)
    model = build_model(name, ((7,), (6,)), 10, preset="tiny")  # fixed decoder length
    free = build_model(name, ((7,), (None,)), 10, preset="tiny")  # any length
    rng = np.random.default_rng(0)
    head = model.get_layer("head")  # a sharp random head: outputs vary with the inputs
    head.kernel.assign(5 * rng.normal(size=head.kernel.shape).astype("float32"))
    free.set_weights(model.get_weights())
    src = rng.integers(2, 10, size=(16, 7)).astype("int32")
    src[:3, 5:] = 0  # padded sources
    want = growing_decode(free, src, 1, 6)
    np.testing.assert_array_equal(greedy_decode(model, src, start_id=1, steps=6), want)
    np.testing.assert_array_equal(greedy_decode(free, src, start_id=1, steps=6), want)
    # why it is exact: zeros after position t leave positions <= t as a shorter input has them
    tokens = rng.integers(2, 10, size=(16, 6)).astype("int32")
    for t in (0, 2, 4):
        padded = tokens.copy()
        padded[:, t + 1:] = 0
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model([src, padded]))[:, :t + 1],
                                   keras.ops.convert_to_numpy(free([src, tokens[:, :t + 1]])),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot decode 7 steps"):
        greedy_decode(model, src, start_id=1, steps=7)


@pytest.mark.once
def test_seq2seq_recipe_runs_through_the_train_stage(tmp_path):
    """Not slow: a tiny model, one epoch, 200 generated pairs; every score is written."""
    from pipelines.run import run_pipeline

    cfg = load_config("seq2seq_reverse", [
        f"output_dir={tmp_path}", "tracking.enabled=false", "train.verbose=0",
        "train.epochs=1", "model.preset=tiny", "data.params.n=200"])
    run_dir, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    r = results["train"]
    for key in ("test_accuracy", "test_sequence_accuracy", "test_greedy_token_accuracy",
                "test_greedy_sequence_accuracy"):
        assert 0.0 <= r[key] <= 1.0, key
    assert r["test_greedy_sequence_accuracy"] <= r["test_greedy_token_accuracy"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.sum(metrics["confusion_matrix"]) == 30 * 8  # every test token counted
    pre = json.loads((run_dir / "preprocessing.json").read_text())
    assert pre["input_shape"] == [[8], [8]] and (run_dir / "model.keras").exists()


@pytest.mark.once
def test_digits_captions_pair_each_image_with_its_digit_token():
    d = load_splits("digits_captions", normalize=False)
    images, captions = d.train.x
    assert d.input_shape == ((8, 8, 1), (4,)) and captions.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # exactly one class token (1..10) per caption, the digit's own; the rest noise (11..19)
    is_class = captions <= 10
    assert (is_class.sum(1) == 1).all()
    np.testing.assert_array_equal(captions[is_class], d.train.y + 1)
    assert captions[~is_class].min() >= 11 and captions.max() < d.info["vocab_size"] == 20


@pytest.mark.once
def test_clip_recipe_reports_trained_and_untrained_probes(tmp_path):
    """Not slow: the tiny CLIP, one epoch, through the train stage's custom path."""
    from pipelines.run import run_pipeline

    cfg = load_config("clip_digits", [
        f"output_dir={tmp_path}", "tracking.enabled=false", "train.verbose=0",
        "train.epochs=1", "model.preset=tiny"])
    run_dir, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    r = results["train"]
    assert r["epochs"] == 1 and np.isfinite(r["test_loss"])
    for key in ("test_probe_accuracy", "test_probe_accuracy_untrained"):
        assert 0.1 <= r[key] <= 1.0, key  # 10 classes: a probe is at least near chance
    assert json.loads((run_dir / "metrics.json").read_text())["test_probe_accuracy"] == \
        r["test_probe_accuracy"]
