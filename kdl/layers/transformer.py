"""Transformer encoder and decoder blocks, and the ViT's patch/token layers."""

from __future__ import annotations

import keras
from keras import ops

from kdl.layers.attention import TransformerAttention, causal_mask


def _ffn(model_dim, mlp_dim, activation, dtype):
    return (keras.layers.Dense(mlp_dim, activation=activation, name="mlp_in", dtype=dtype),
            keras.layers.Dense(model_dim, name="mlp_out", dtype=dtype))


@keras.saving.register_keras_serializable(package="kdl")
class TransformerEncoderBlock(keras.layers.Layer):
    """Self-attention and a two-layer MLP, each in a residual branch with LayerNorm.

    Args:
        num_heads: attention heads.
        model_dim: width of the residual stream (the input's last axis).
        mlp_dim: hidden width of the MLP.
        dropout: dropout rate on attention weights and branch outputs.
        norm_first: pre-norm (ViT, GPT) if True, post-norm (the 2017 paper) if False.
        activation: MLP activation.
        epsilon: LayerNorm epsilon.

    Call arguments:
        x: `(batch, length, model_dim)`.
        padding_mask: optional boolean `(batch, length)`, True on real tokens.
        training: dropout on or off.
    """

    def __init__(self, num_heads, model_dim, mlp_dim, dropout=0.0, norm_first=True,
                 activation="gelu", epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.model_dim = model_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.norm_first = norm_first
        self.activation = activation
        self.epsilon = epsilon
        d = self.dtype_policy
        self.attention = TransformerAttention(num_heads, model_dim, dropout, name="attention",
                                            dtype=d)
        self.norm1 = keras.layers.LayerNormalization(epsilon=epsilon, name="norm1", dtype=d)
        self.norm2 = keras.layers.LayerNormalization(epsilon=epsilon, name="norm2", dtype=d)
        self.mlp_in, self.mlp_out = _ffn(model_dim, mlp_dim, activation, d)
        self.drop = keras.layers.Dropout(dropout, dtype=d)

    def build(self, x_shape):
        self.attention.build(x_shape, x_shape)
        self.norm1.build(x_shape)
        self.norm2.build(x_shape)
        self.mlp_in.build(x_shape)
        self.mlp_out.build((*x_shape[:-1], self.mlp_dim))

    def call(self, x, padding_mask=None, training=None):
        mask = None if padding_mask is None else padding_mask[:, None, None, :]
        h = self.norm1(x) if self.norm_first else x
        h = self.attention(h, h, attention_mask=mask, training=training)
        h = self.drop(h, training=training)
        x = x + h if self.norm_first else self.norm1(x + h)
        h = self.norm2(x) if self.norm_first else x
        h = self.drop(self.mlp_out(self.mlp_in(h)), training=training)
        return x + h if self.norm_first else self.norm2(x + h)

    def compute_output_shape(self, x_shape, padding_mask_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "model_dim": self.model_dim, "mlp_dim": self.mlp_dim, "dropout": self.dropout,
                "norm_first": self.norm_first, "activation": self.activation,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kdl")
class TransformerDecoderBlock(keras.layers.Layer):
    """Causal self-attention, cross-attention to the encoder, MLP (each residual).

    Position t attends only to target positions <= t (causal mask), combined
    with the target padding mask; cross-attention skips padded source tokens.

    Args:
        num_heads, model_dim, mlp_dim, dropout, norm_first, activation, epsilon:
            as in `TransformerEncoderBlock`.

    Call arguments:
        x: target stream `(batch, target_len, model_dim)`.
        context: encoder output `(batch, source_len, model_dim)`.
        padding_mask: optional boolean `(batch, target_len)`.
        context_padding_mask: optional boolean `(batch, source_len)`.
        training: dropout on or off.
    """

    def __init__(self, num_heads, model_dim, mlp_dim, dropout=0.0, norm_first=True,
                 activation="gelu", epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.model_dim = model_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.norm_first = norm_first
        self.activation = activation
        self.epsilon = epsilon
        d = self.dtype_policy
        self.self_attention = TransformerAttention(num_heads, model_dim, dropout,
                                                 name="self_attention", dtype=d)
        self.cross_attention = TransformerAttention(num_heads, model_dim, dropout,
                                                  name="cross_attention", dtype=d)
        self.norms = [keras.layers.LayerNormalization(epsilon=epsilon, name=f"norm{i + 1}",
                                                      dtype=d) for i in range(3)]
        self.mlp_in, self.mlp_out = _ffn(model_dim, mlp_dim, activation, d)
        self.drop = keras.layers.Dropout(dropout, dtype=d)

    def build(self, x_shape, context_shape):
        self.self_attention.build(x_shape, x_shape)
        self.cross_attention.build(x_shape, context_shape)
        for n in self.norms:
            n.build(x_shape)
        self.mlp_in.build(x_shape)
        self.mlp_out.build((*x_shape[:-1], self.mlp_dim))

    def _residual(self, x, i, fn, training):
        h = self.norms[i](x) if self.norm_first else x
        h = self.drop(fn(h), training=training)
        return x + h if self.norm_first else self.norms[i](x + h)

    def call(self, x, context, padding_mask=None, context_padding_mask=None, training=None):
        t = ops.shape(x)[1]
        self_mask = causal_mask(t)[None, None]
        if padding_mask is not None:
            self_mask = ops.logical_and(self_mask, padding_mask[:, None, None, :])
        cross_mask = (None if context_padding_mask is None
                      else context_padding_mask[:, None, None, :])
        x = self._residual(x, 0, lambda h: self.self_attention(
            h, h, attention_mask=self_mask, training=training), training)
        x = self._residual(x, 1, lambda h: self.cross_attention(
            h, context, attention_mask=cross_mask, training=training), training)
        return self._residual(x, 2, lambda h: self.mlp_out(self.mlp_in(h)), training)

    def compute_output_shape(self, x_shape, *args, **kwargs):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "model_dim": self.model_dim, "mlp_dim": self.mlp_dim, "dropout": self.dropout,
                "norm_first": self.norm_first, "activation": self.activation,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kdl")
class PatchEmbedding(keras.layers.Layer):
    """Splits an image into non-overlapping patches and projects each (a strided conv).

    Args:
        patch_size: side of a square patch.
        model_dim: width of each patch embedding.

    Call arguments:
        images: `(batch, height, width, channels)`, sides divisible by `patch_size`.

    Returns:
        `(batch, num_patches, model_dim)`.
    """

    def __init__(self, patch_size, model_dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.model_dim = model_dim
        self.projection = keras.layers.Conv2D(model_dim, patch_size, strides=patch_size,
                                              name="projection", dtype=self.dtype_policy)

    def build(self, images_shape):
        h, w = images_shape[1], images_shape[2]
        if (h is not None and h % self.patch_size) or (w is not None and w % self.patch_size):
            raise ValueError(f"image size {h}x{w} is not divisible by patch_size "
                             f"{self.patch_size}; resize or pick another patch size")
        self.projection.build(images_shape)

    def call(self, images):
        x = self.projection(images)
        return ops.reshape(x, (ops.shape(x)[0], -1, self.model_dim))

    def compute_output_shape(self, images_shape):
        n = None
        if images_shape[1] is not None and images_shape[2] is not None:
            n = (images_shape[1] // self.patch_size) * (images_shape[2] // self.patch_size)
        return (images_shape[0], n, self.model_dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size,
                "model_dim": self.model_dim}


@keras.saving.register_keras_serializable(package="kdl")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token: `(batch, n, dim) -> (batch, n + 1, dim)`."""

    def build(self, x_shape):
        self.token = self.add_weight(shape=(1, 1, x_shape[-1]), initializer="zeros",
                                     name="token")

    def call(self, x):
        token = ops.broadcast_to(ops.cast(self.token, x.dtype),
                                 (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, x_shape):
        n = None if x_shape[1] is None else x_shape[1] + 1
        return (x_shape[0], n, x_shape[2])


@keras.saving.register_keras_serializable(package="kdl")
class LearnedPositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding per position; the length is fixed at build time.

    Args:
        initializer_stddev: std of the truncated-normal initializer.
    """

    def __init__(self, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = initializer_stddev

    def build(self, x_shape):
        if x_shape[1] is None:
            raise ValueError("LearnedPositionEmbedding needs a fixed sequence length")
        self.positions = self.add_weight(
            shape=(1, x_shape[1], x_shape[2]), name="positions",
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev))

    def call(self, x):
        return x + ops.cast(self.positions, x.dtype)

    def get_config(self):
        return {**super().get_config(), "initializer_stddev": self.initializer_stddev}
