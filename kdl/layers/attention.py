"""Scaled dot-product and multi-head attention, sinusoidal positions, masks."""

from __future__ import annotations

import math

import keras
from keras import ops

MASK_MARGIN = 30.0


def mask_logits(scores, mask, margin=MASK_MARGIN):
    """Attention logits with the masked-out keys pushed out of the softmax.

    A masked key gets `min(scores over the keys) - margin`, so its softmax
    weight is at most `exp(-margin)` (1e-13) times any allowed key's: the same
    weights as filling with -1e9 in float. Unlike a -1e9 fill it keeps the
    logits' range near their own spread, which full-int8 TFLite needs: there
    the select's output shares one per-tensor scale with its inputs, and a
    -1e9 fill made that scale ~4e6, rounding every real score to the same
    value (uniform attention: the reviews transformer fell from 1.000 to
    0.322 accuracy). A fully masked row stays uniform, as with -1e9.

    Args:
        scores: float logits, keys on the last axis.
        mask: boolean, broadcastable to `scores`; True where attention is allowed.
        margin: how far below the row's smallest logit masked keys go.
    """
    fill = ops.min(scores, axis=-1, keepdims=True) - ops.cast(margin, scores.dtype)
    return ops.where(ops.cast(mask, "bool"), scores, fill)


def scaled_dot_product_attention(q, k, v, mask=None):
    """`softmax(q k^T / sqrt(head_dim)) v`, per head.

    Args:
        q: `(batch, heads, query_len, head_dim)`.
        k, v: `(batch, heads, key_len, head_dim)`.
        mask: optional boolean, broadcastable to `(batch, heads, query_len,
            key_len)`; True where a query may attend to a key.

    Returns:
        `(output, weights)`: `(batch, heads, query_len, head_dim)` and the
        attention weights `(batch, heads, query_len, key_len)`.

    The scale is the HEAD width, not the model width: with `d_model / heads`
    per head the dot products have variance ~`head_dim`.
    """
    head_dim = q.shape[-1]
    scores = ops.einsum("bhqd,bhkd->bhqk", q, k) / ops.cast(math.sqrt(head_dim), q.dtype)
    scores = ops.cast(scores, "float32")  # softmax at full precision under mixed policies
    if mask is not None:
        scores = mask_logits(scores, mask)
    weights = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
    return ops.einsum("bhqk,bhkd->bhqd", weights, v), weights


def causal_mask(query_len, key_len=None):
    """Boolean `(query_len, key_len)`: position t attends to positions <= t."""
    key_len = query_len if key_len is None else key_len
    i = ops.arange(query_len)[:, None]
    j = ops.arange(key_len)[None, :]
    return ops.greater_equal(i, j)


def sinusoidal_encoding(length, dim, base=10000.0):
    """The Transformer's positional encoding, `(length, dim)`, float32.

    `PE[p, 2i] = sin(p / base^(2i/dim))`, `PE[p, 2i+1] = cos(p / base^(2i/dim))`.
    """
    pos = ops.cast(ops.arange(length), "float32")[:, None]
    i = ops.cast(ops.arange(dim), "float32")[None, :]
    even = ops.cast(ops.floor(i / 2.0) * 2.0, "float32")
    angle = pos / ops.power(base, even / float(dim))
    is_even = ops.equal(ops.mod(ops.arange(dim), 2), 0)[None, :]
    return ops.where(is_even, ops.sin(angle), ops.cos(angle))


@keras.saving.register_keras_serializable(package="kdl")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Adds the fixed sinusoidal positional encoding to `(batch, length, dim)` input.

    Args:
        scale_input: multiply the input by `sqrt(dim)` first, as the Transformer
            does with its embeddings.
        base: the wavelength base (10000 in the paper).

    Call arguments:
        x: `(batch, length, dim)`.
    """

    def __init__(self, scale_input=False, base=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.scale_input = scale_input
        self.base = base

    def call(self, x):
        length, dim = ops.shape(x)[1], x.shape[-1]
        pe = ops.cast(sinusoidal_encoding(length, dim, self.base), x.dtype)
        if self.scale_input:
            x = x * ops.cast(math.sqrt(dim), x.dtype)
        return x + pe[None]

    def get_config(self):
        return {**super().get_config(), "scale_input": self.scale_input, "base": self.base}


@keras.saving.register_keras_serializable(package="kdl")
class PaddingMask(keras.layers.Layer):
    """`tokens != pad_id`, a boolean `(batch, length)` mask.

    Args:
        pad_id: the padding token id.
    """

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, tokens):
        return ops.not_equal(tokens, self.pad_id)

    def compute_output_spec(self, tokens):
        return keras.KerasTensor(tokens.shape, dtype="bool")

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="kdl")
class MaskedMeanPooling(keras.layers.Layer):
    """The mean over positions where `tokens != pad_id` (all-padding rows give zeros).

    Call arguments:
        x: `(batch, length, features)`.
        tokens: `(batch, length)` token ids the mask comes from.
    """

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def build(self, x_shape, tokens_shape):
        pass  # no weights; named shapes so Keras can build it from both inputs

    def call(self, x, tokens):
        mask = ops.expand_dims(ops.cast(ops.not_equal(tokens, self.pad_id), x.dtype), -1)
        total = ops.sum(x * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, x.dtype))

    def compute_output_shape(self, x_shape, tokens_shape):
        return (x_shape[0], x_shape[2])

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="kdl")
class TransformerAttention(keras.layers.Layer):
    """Multi-head attention with query/key/value/output projections (the Transformer's).

    Called `MultiHeadAttention` until kdl renamed it: it is not Keras's
    `keras.layers.MultiHeadAttention` (this one takes `model_dim`, not `key_dim`).

    Args:
        num_heads: number of heads.
        model_dim: width of the projections; each head is `model_dim // num_heads`
            wide and the scores are scaled by `sqrt(model_dim // num_heads)`.
        dropout: dropout rate on the attention weights.
        use_bias: biases in the projections.

    Call arguments:
        query: `(batch, query_len, dim)`.
        value: `(batch, key_len, dim)`; defaults to `query` (self-attention).
        attention_mask: boolean, broadcastable to `(batch, heads, query_len,
            key_len)`; True where attention is allowed.
        training: dropout on or off.

    Returns:
        `(batch, query_len, model_dim)`.

    Example:

    ```python
    mha = TransformerAttention(num_heads=8, model_dim=512)
    y = mha(x, x, attention_mask=causal_mask(10)[None, None])
    ```
    """

    def __init__(self, num_heads, model_dim, dropout=0.0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if model_dim % num_heads:
            raise ValueError(f"model_dim ({model_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.num_heads = num_heads
        self.model_dim = model_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.head_dim = model_dim // num_heads
        dense = dict(use_bias=use_bias, dtype=self.dtype_policy)
        self.query_dense = keras.layers.Dense(model_dim, name="query", **dense)
        self.key_dense = keras.layers.Dense(model_dim, name="key", **dense)
        self.value_dense = keras.layers.Dense(model_dim, name="value", **dense)
        self.output_dense = keras.layers.Dense(model_dim, name="output", **dense)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.last_attention_weights = None

    def build(self, query_shape, value_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        self.query_dense.build(query_shape)
        self.key_dense.build(value_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build((*query_shape[:-1], self.model_dim))

    def _split(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (b, t, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, query, value=None, attention_mask=None, training=None):
        value = query if value is None else value
        q = self._split(self.query_dense(query))
        k = self._split(self.key_dense(value))
        v = self._split(self.value_dense(value))
        out, weights = scaled_dot_product_attention(q, k, v, attention_mask)
        if self.dropout:
            # dropout on the weights: recompute the weighted sum
            weights = self.dropout_layer(weights, training=training)
            out = ops.einsum("bhqk,bhkd->bhqd", weights, v)
        b, t = ops.shape(out)[0], ops.shape(out)[2]
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, t, self.model_dim))
        return self.output_dense(out)

    def compute_output_shape(self, query_shape, value_shape=None, attention_mask_shape=None):
        return (*query_shape[:-1], self.model_dim)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "model_dim": self.model_dim, "dropout": self.dropout, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="kdl")
class TimestepEmbedding(keras.layers.Layer):
    """Sinusoidal embedding of integer timesteps: `(batch,) -> (batch, dim)`.

    `[sin(t w_0..w_{h-1}), cos(t w_0..w_{h-1})]` with `w_i = base^(-i/h)`, `h = dim/2`.

    Args:
        dim: embedding width (even).
        base: the wavelength base.
    """

    def __init__(self, dim, base=10000.0, **kwargs):
        super().__init__(**kwargs)
        if dim % 2:
            raise ValueError(f"TimestepEmbedding dim must be even, got {dim}")
        self.dim = dim
        self.base = base

    def call(self, t):
        half = self.dim // 2
        freqs = ops.exp(-math.log(self.base) * ops.cast(ops.arange(half), "float32") / half)
        args = ops.cast(ops.reshape(t, (-1, 1)), "float32") * freqs[None]
        return ops.cast(ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1),
                        self.compute_dtype)

    def compute_output_shape(self, t_shape):
        return (t_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "base": self.base}


def _deprecated(module: str, old: str, new: type):
    """`old`, the class's name until it was renamed `new` (it shadowed `keras.layers.<old>`,
    whose signature differs): `.keras` files saved under `kdl>old` still load (the old
    registered name maps to `new`), and importing `old` still works, with a warning."""
    keras.saving.get_custom_objects()[f"kdl>{old}"] = new

    def __getattr__(name):
        if name == old:
            import warnings

            warnings.warn(f"{module}.{old} is renamed {new.__name__} (the old name shadowed "
                          f"keras.layers.{old}, whose arguments differ)", DeprecationWarning,
                          stacklevel=2)
            return new
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = _deprecated(__name__, "MultiHeadAttention", TransformerAttention)
