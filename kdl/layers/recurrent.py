"""Additive (Bahdanau) attention."""

import keras
from keras import ops

from kdl.layers.attention import _deprecated, mask_logits


@keras.saving.register_keras_serializable(package="kdl")
class BahdanauAttention(keras.layers.Layer):
    """Bahdanau's additive attention: `score(s, h) = v^T tanh(W_q s + W_k h)`.

    Called `AdditiveAttention` until kdl renamed it: it is not Keras's
    `keras.layers.AdditiveAttention` (this one has its own projections and returns the
    weights too).

    Args:
        units: width of the scoring MLP.

    Call arguments:
        query: decoder states `(batch, target_len, dq)`.
        value: encoder states `(batch, source_len, dv)`.
        value_mask: optional boolean `(batch, source_len)`, True on real tokens.

    Returns:
        `(context, weights)`: `(batch, target_len, dv)` and
        `(batch, target_len, source_len)`.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        d = self.dtype_policy
        self.query_dense = keras.layers.Dense(units, use_bias=False, name="query", dtype=d)
        self.key_dense = keras.layers.Dense(units, name="key", dtype=d)
        self.score_dense = keras.layers.Dense(1, use_bias=False, name="score", dtype=d)

    def build(self, query_shape, value_shape):
        self.query_dense.build(query_shape)
        self.key_dense.build(value_shape)
        self.score_dense.build((*value_shape[:-1], self.units))

    def call(self, query, value, value_mask=None):
        q = self.query_dense(query)[:, :, None, :]  # (b, tq, 1, u)
        k = self.key_dense(value)[:, None, :, :]  # (b, 1, tk, u)
        scores = ops.cast(ops.squeeze(self.score_dense(ops.tanh(q + k)), -1), "float32")
        if value_mask is not None:
            scores = mask_logits(scores, value_mask[:, None, :])
        weights = ops.cast(ops.softmax(scores, axis=-1), value.dtype)
        return ops.einsum("bqk,bkd->bqd", weights, value), weights

    def compute_output_shape(self, query_shape, value_shape, value_mask_shape=None):
        return ((*query_shape[:2], value_shape[-1]),
                (query_shape[0], query_shape[1], value_shape[1]))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


__getattr__ = _deprecated(__name__, "AdditiveAttention", BahdanauAttention)
