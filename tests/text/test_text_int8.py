"""Full int8 of kdl's transformer classifier on token ids keeps its accuracy.

It used to fall to chance (0.322 vs 1.000 on `reviews`): the padding mask filled the
attention logits with -1e9, full-int8 TFLite gives that select one per-tensor scale
(~4e6), and every real logit rounded to the same value. `mask_logits` keeps the
masked logits within `margin` of the row's own range.
"""

import keras
import numpy as np
import pytest

from kdl.data import load_splits
from kdl.export import export
from kdl.export.litert import LiteRTRunner
from kdl.models import build_model

pytestmark = [pytest.mark.once, pytest.mark.tf_only]  # export converts with TensorFlow


def _int8_scales(path):
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    return {d["name"]: float(np.max(d["quantization_parameters"]["scales"]))
            for d in details if d["dtype"] == np.int8}  # per-channel weights: the largest


def _padded_ids(n=64, length=12, vocab=50):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, size=(n, length)).astype("int32")
    ids[np.arange(length)[None, :] >= rng.integers(2, length, size=(n, 1))] = 0  # right pad
    return ids


def _assert_no_huge_int8_scale(model, tmp_path):
    ids = _padded_ids()
    paths = export(model, tmp_path, ["tflite_int8"], {"tflite_int8": {"representative": ids}})
    scales = _int8_scales(paths["tflite_int8"])
    assert scales and all(np.isfinite(v) and v > 0 for v in scales.values())
    worst = max(scales, key=scales.get)
    assert scales[worst] < 1.0, f"{worst}: int8 scale {scales[worst]:g} (a -1e9 mask fill?)"
    return paths["tflite_int8"], ids


def test_no_int8_tensor_of_a_masked_transformer_spans_the_mask_fill(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("transformer_classifier", (12,), 3, preset="tiny", vocab_size=50)
    _assert_no_huge_int8_scale(model, tmp_path)


# KerasHub's attention is Keras's MultiHeadAttention: without dropout its fused
# `dot_product_attention` (TF fill -2.4e38: an int8 scale of 9.3e35 before the export
# traced with a bounded fill), with dropout (checkpoints: 0.1) its masked Softmax (-1e9:
# 3.9e6). The fused path's fill is also checked in tests/backend/test_keras_private.py.
@pytest.mark.parametrize("backbone,dropout", [
    pytest.param("bert", 0.0, marks=pytest.mark.slow), ("distil_bert", 0.1)])
def test_no_int8_tensor_of_a_kerashub_bert_spans_the_mask_fill(tmp_path, backbone, dropout):
    keras.utils.set_random_seed(0)
    softmax_call = keras.layers.Softmax.call
    model = build_model("bert_classifier", (12,), 3, preset="tiny", vocab_size=50,
                        backbone=backbone, dropout=dropout)
    path, ids = _assert_no_huge_int8_scale(model, tmp_path)
    assert keras.layers.Softmax.call is softmax_call  # Keras restored after the export
    runner = LiteRTRunner(path)
    pred = np.concatenate([runner(ids[i:i + 1]) for i in range(8)])
    want = model.predict(ids[:8], verbose=0)
    assert np.all(np.isfinite(pred)) and np.max(np.abs(pred - want)) < 0.05


@pytest.mark.slow
def test_full_int8_transformer_keeps_its_accuracy_on_reviews(tmp_path):
    s = load_splits("reviews", n=1500, seed=0,
                    tokenizer={"vocab_size": 300, "sequence_length": 24})
    keras.utils.set_random_seed(0)
    model = build_model("transformer_classifier", s.input_shape, 3,
                        vocab_size=s.info["vocab_size"], model_dim=32, num_heads=2,
                        num_layers=1, mlp_dim=64)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(s.train.x, s.train.y, epochs=10, batch_size=32, verbose=0)
    keras_acc = float(np.mean(model.predict(s.test.x, verbose=0).argmax(-1) == s.test.y))
    assert keras_acc >= 0.9, keras_acc  # order matters in `reviews`: a real model first
    paths = export(model, tmp_path, ["tflite_int8"],
                   {"tflite_int8": {"representative": s.train.x[:200]}})
    runner = LiteRTRunner(paths["tflite_int8"])
    pred = np.concatenate([runner(s.test.x[i:i + 1]) for i in range(len(s.test.x))])
    assert np.all(np.isfinite(pred))
    int8_acc = float(np.mean(pred.argmax(-1) == s.test.y))
    assert keras_acc - int8_acc <= 0.01, (keras_acc, int8_acc)
