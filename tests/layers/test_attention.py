"""Attention, positional encodings and masks against NumPy oracles."""

import keras
import numpy as np
import pytest

from kdl.layers import (
    SinusoidalPositionEncoding,
    TransformerAttention,
    TransformerDecoderBlock,
    causal_mask,
    mask_logits,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def naive_attention(q, k, v, mask=None):
    """Loop-per-head reference: softmax(q k^T / sqrt(head_dim)) v."""
    b, h, tq, d = q.shape
    out = np.zeros_like(q)
    for i in range(b):
        for j in range(h):
            s = q[i, j] @ k[i, j].T / np.sqrt(d)
            if mask is not None:
                s = np.where(np.broadcast_to(mask, (b, h, tq, k.shape[2]))[i, j], s, -1e9)
            out[i, j] = np_softmax(s) @ v[i, j]
    return out


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def test_scaled_dot_product_matches_naive_with_and_without_mask():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 3, 4, 5)).astype("float32") for _ in range(3))
    out, w = scaled_dot_product_attention(q, k, v)
    np.testing.assert_allclose(to_np(out), naive_attention(q, k, v), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(w).sum(-1), 1.0, rtol=1e-5)
    mask = np.tril(np.ones((4, 4), bool))[None, None]
    out, w = scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(to_np(out), naive_attention(q, k, v, mask), rtol=1e-5,
                               atol=1e-5)
    assert np.all(to_np(w)[..., ~mask[0, 0]] < 1e-12)  # exp(-30) of an allowed key's


def test_mask_logits_stays_within_the_scores_range():
    """Masked keys sit `margin` below the row's smallest logit (not at -1e9: full-int8
    TFLite gives the select one scale, and -1e9 rounded every real score to one value);
    a fully masked row stays uniform."""
    rng = np.random.default_rng(1)
    scores = rng.normal(scale=5.0, size=(2, 3, 4)).astype("float32")
    mask = np.array([[True, True, False, False]] * 3 + [[False] * 4] * 3).reshape(2, 3, 4)
    out = to_np(mask_logits(scores, mask, margin=30.0))
    np.testing.assert_array_equal(out[mask], scores[mask])
    assert np.all(np.isfinite(out))
    lo = scores.min(-1, keepdims=True) - 30.0
    np.testing.assert_allclose(np.where(mask, lo, out), np.broadcast_to(lo, out.shape), atol=1e-4)
    assert out.min() >= scores.min() - 30.0 - 1e-4
    w = to_np(keras.ops.softmax(out, axis=-1))
    np.testing.assert_allclose(w[1], 0.25, rtol=1e-6)  # fully masked: uniform, as with -1e9


def test_scale_is_head_width_not_model_width():
    # one head of width 4 inside a model of width 16: scores / 2, not / 4
    q = np.ones((1, 1, 1, 4), "float32")
    k = np.stack([np.zeros(4), np.ones(4)])[None, None].astype("float32")
    v = np.eye(2, 4, dtype="float32")[None, None]
    _, w = scaled_dot_product_attention(q, k, v)
    expected = np_softmax(np.array([0.0, 4.0 / 2.0]))
    np.testing.assert_allclose(to_np(w)[0, 0, 0], expected, rtol=1e-6)


def test_multi_head_attention_layer_matches_numpy_projections():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    ctx = rng.normal(size=(2, 3, 8)).astype("float32")
    mha = TransformerAttention(num_heads=2, model_dim=8)
    y = to_np(mha(x, ctx))

    def proj(layer, a):
        return a @ to_np(layer.kernel) + to_np(layer.bias)

    def split(a):
        return a.reshape(a.shape[0], a.shape[1], 2, 4).transpose(0, 2, 1, 3)

    q, k, v = split(proj(mha.query_dense, x)), split(proj(mha.key_dense, ctx)), split(
        proj(mha.value_dense, ctx))
    o = naive_attention(q, k, v).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    np.testing.assert_allclose(y, proj(mha.output_dense, o), rtol=1e-4, atol=1e-5)


def test_mha_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        TransformerAttention(num_heads=3, model_dim=8)


def test_sinusoidal_encoding_matches_the_formula():
    length, dim = 7, 6
    pe = to_np(sinusoidal_encoding(length, dim))
    ref = np.zeros((length, dim))
    for p in range(length):
        for i in range(0, dim, 2):
            ref[p, i] = np.sin(p / 10000 ** (i / dim))
            ref[p, i + 1] = np.cos(p / 10000 ** (i / dim))
    np.testing.assert_allclose(pe, ref, rtol=1e-5, atol=1e-6)
    x = np.ones((2, length, dim), "float32")
    y = to_np(SinusoidalPositionEncoding(scale_input=True)(x))
    np.testing.assert_allclose(y[1], np.sqrt(dim) + ref, rtol=1e-5, atol=1e-5)


def test_causal_mask_and_decoder_causality():
    np.testing.assert_array_equal(to_np(causal_mask(3)), np.tril(np.ones((3, 3), bool)))
    rng = np.random.default_rng(2)
    block = TransformerDecoderBlock(num_heads=2, model_dim=8, mlp_dim=16)
    x = rng.normal(size=(1, 6, 8)).astype("float32")
    ctx = rng.normal(size=(1, 4, 8)).astype("float32")
    y1 = to_np(block(x, ctx))
    x2 = x.copy()
    x2[:, 4:] += 10.0  # change the future of position 3
    y2 = to_np(block(x2, ctx))
    np.testing.assert_allclose(y1[:, :4], y2[:, :4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(y1[:, 4:], y2[:, 4:])


def test_old_layer_names_still_load_and_import(tmp_path):
    """`MultiHeadAttention`/`AdditiveAttention` were renamed (they shadowed Keras's layers of
    those names): a .keras file written under the old registered names still loads, with
    the same outputs, and the old import names still work, with a DeprecationWarning."""
    import json
    import zipfile

    import kdl.layers
    from kdl.layers import BahdanauAttention

    keras.utils.set_random_seed(0)
    q, v = keras.Input((4, 8)), keras.Input((3, 8))
    context, _ = BahdanauAttention(6, name="additive")(q, v)
    out = TransformerAttention(num_heads=2, model_dim=8, name="mha")(context, v)
    model = keras.Model([q, v], out)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, 4, 8)).astype("float32"), rng.normal(size=(2, 3, 8)).astype("float32")]
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as src, \
            zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                text = data.decode()
                assert '"kdl>TransformerAttention"' in text and '"kdl>BahdanauAttention"' in text
                text = (text.replace("TransformerAttention", "MultiHeadAttention")
                        .replace("BahdanauAttention", "AdditiveAttention"))
                json.loads(text)
                data = text.encode()
            dst.writestr(item, data)
    old = keras.saving.load_model(tmp_path / "old.keras")
    kinds = {la.name: type(la) for la in old.layers}
    assert kinds["mha"] is TransformerAttention and kinds["additive"] is BahdanauAttention
    np.testing.assert_allclose(keras.ops.convert_to_numpy(old(x)),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-6)
    with pytest.warns(DeprecationWarning, match="renamed TransformerAttention"):
        assert kdl.layers.MultiHeadAttention is TransformerAttention
    with pytest.warns(DeprecationWarning, match="renamed BahdanauAttention"):
        from kdl.layers.recurrent import AdditiveAttention
    assert AdditiveAttention is BahdanauAttention
    with pytest.raises(AttributeError):
        kdl.layers.NoSuchLayer  # noqa: B018
