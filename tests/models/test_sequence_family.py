"""Recurrent, seq2seq and TCN models: causality, attention, pooling, decoding."""

import keras
import numpy as np
import pytest

from kdl.layers import BahdanauAttention
from kdl.models import build_model
from kdl.models.rnn import greedy_decode
from kdl.models.tcn.tcn import receptive_field


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def test_tcn_is_causal():
    model = build_model("tcn", (12, 2), 3, preset="tiny")
    seq = keras.Model(model.input, model.get_layer("sequence").output)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 12, 2)).astype("float32")
    x2 = x.copy()
    x2[:, 7:] = rng.normal(size=(1, 5, 2))  # change the inputs from t=7 on
    a, b = to_np(seq(x)), to_np(seq(x2))
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[:, 7:], b[:, 7:])


def test_tcn_receptive_field_is_what_it_says():
    model = build_model("tcn", (16, 1), 1, task="regression", preset="tiny")
    seq = keras.Model(model.input, model.get_layer("sequence").output)
    field = receptive_field(2, (1, 2))  # 7
    x = np.zeros((1, 16, 1), "float32")
    x2 = x.copy()
    x2[0, 15 - field] = 5.0  # just outside the field of the last step
    np.testing.assert_allclose(to_np(seq(x))[0, -1], to_np(seq(x2))[0, -1], atol=1e-6)
    x2[0, 15 - field + 1] = 5.0  # inside
    assert not np.allclose(to_np(seq(x))[0, -1], to_np(seq(x2))[0, -1])


@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_rnn_cells_and_pools(cell, pool):
    model = build_model("rnn", (5, 3), 4, preset="tiny", cell=cell, pool=pool)
    assert model(np.zeros((2, 5, 3), "float32")).shape == (2, 4)


def test_rnn_rejects_unknown_cell():
    with pytest.raises(ValueError, match="cell must be"):
        build_model("rnn", (5, 3), 4, cell="transformer")


def test_additive_attention_matches_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 3, 4)).astype("float32")
    v = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = BahdanauAttention(7)
    ctx, w = layer(q, v, value_mask=mask)
    wq, wk, bk = to_np(layer.query_dense.kernel), to_np(layer.key_dense.kernel), to_np(
        layer.key_dense.bias)
    vs = to_np(layer.score_dense.kernel)[:, 0]
    s = np.tanh((q @ wq)[:, :, None] + (v @ wk + bk)[:, None]) @ vs
    s = np.where(mask[:, None], s, -1e9)
    ref_w = np.exp(s - s.max(-1, keepdims=True))
    ref_w /= ref_w.sum(-1, keepdims=True)
    np.testing.assert_allclose(to_np(w), ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(ctx), ref_w @ v, rtol=1e-5, atol=1e-5)


def test_seq2seq_teacher_forcing_is_causal_and_greedy_decode_runs():
    model = build_model("seq2seq", ((6,), (None,)), 9, preset="tiny")
    src = np.array([[3, 4, 5, 6, 0, 0]], "int32")
    tgt = np.array([[1, 3, 4, 5]], "int32")
    a = to_np(model([src, tgt]))
    tgt2 = tgt.copy()
    tgt2[0, 2:] = [8, 8]
    b = to_np(model([src, tgt2]))
    np.testing.assert_allclose(a[:, :2], b[:, :2], rtol=1e-5, atol=1e-6)
    out = greedy_decode(model, src, start_id=1, steps=3)
    assert out.shape == (1, 3) and out.max() < 9
