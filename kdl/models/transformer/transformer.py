"""Transformer encoder classifier and the full encoder-decoder (Vaswani et al. 2017)."""

import keras

from kdl.layers import (
    PaddingMask,
    SinusoidalPositionEncoding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)
from kdl.models.decoding import greedy_decode
from kdl.models.heads import output_head
from kdl.registry import MODELS

CLASSIFIER_PRESETS = {
    "tiny": {"model_dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    "default": {"model_dim": 64, "num_heads": 4, "num_layers": 2, "mlp_dim": 128,
                "dropout": 0.1},
}


def _embed(inputs, vocab_size, model_dim, name):
    if vocab_size:
        x = keras.layers.Embedding(vocab_size, model_dim, name=f"{name}_embedding")(inputs)
        return x, PaddingMask(name=f"{name}_padding_mask")(inputs)
    return keras.layers.Dense(model_dim, name=f"{name}_projection")(inputs), None


@MODELS.register("transformer_classifier", presets=CLASSIFIER_PRESETS,
                 tasks=("classification", "regression"), harness={"input_shape": (6, 3)})
def transformer_classifier(input_shape, num_outputs, *, task="classification", vocab_size=None,
                           model_dim=64, num_heads=4, num_layers=2, mlp_dim=128, dropout=0.0,
                           norm_first=True, name="transformer_classifier"):
    """A Transformer encoder over a sequence, mean-pooled, then a head.

    Args:
        input_shape: `(length,)` token ids (with `vocab_size`) or `(length, features)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        vocab_size: token vocabulary (id 0 is padding and masked); None for
            real-valued features, which are projected to `model_dim`.
        model_dim, num_heads, num_layers, mlp_dim, dropout, norm_first: the encoder.
    """
    if vocab_size and len(input_shape) != 1:
        raise ValueError(f"token input is (length,), got {input_shape}")
    if not vocab_size and len(input_shape) != 2:
        raise ValueError(f"feature input is (length, features), got {input_shape}; "
                         "set vocab_size for token ids")
    inputs = keras.Input(shape=input_shape, dtype="int32" if vocab_size else "float32",
                         name="inputs")
    x, mask = _embed(inputs, vocab_size, model_dim, "source")
    x = SinusoidalPositionEncoding(scale_input=bool(vocab_size), name="positions")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerEncoderBlock(num_heads, model_dim, mlp_dim, dropout, norm_first,
                                    name=f"encoder_{i}")(x, padding_mask=mask)
    if norm_first:
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)


SEQ2SEQ_PRESETS = {
    "tiny": {"model_dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    "default": {"model_dim": 64, "num_heads": 4, "num_layers": 2, "mlp_dim": 128,
                "dropout": 0.1},
    # the paper's base model (post-norm, ReLU, 2048-wide MLP)
    "base": {"model_dim": 512, "num_heads": 8, "num_layers": 6, "mlp_dim": 2048,
             "dropout": 0.1, "norm_first": False, "activation": "relu"},
}


@MODELS.register("transformer", presets=SEQ2SEQ_PRESETS, tasks=("classification",),
                 decode=greedy_decode,
                 harness={"input_shape": [(6,), (5,)], "vocab": 12, "num_outputs": 12,
                          "output_shape": (5, 12)})
def transformer(input_shape, num_outputs, *, task="classification", source_vocab=None,
                model_dim=512, num_heads=8, num_layers=6, mlp_dim=2048, dropout=0.1,
                norm_first=True, activation="gelu", name="transformer"):
    """The encoder-decoder Transformer, trained with teacher forcing.

    Inputs are `[source_ids, target_in_ids]`; the output is a softmax over the
    target vocabulary at every target position, so `target_out` is
    `target_in` shifted left by one. Id 0 is padding: masked in the encoder,
    the cross-attention and the decoder (with its causal mask).

    Args:
        input_shape: `((source_len,), (target_len,))`; lengths may be None.
        num_outputs: target vocabulary size.
        task: "classification" (a softmax per target token).
        source_vocab: source vocabulary size (default: `num_outputs`).
        model_dim, num_heads, num_layers (each side), mlp_dim, dropout,
            norm_first, activation: the blocks.
    """
    if task != "classification":
        raise ValueError("transformer predicts tokens: task must be 'classification'")
    if len(input_shape) != 2:
        raise ValueError("transformer takes two inputs: input_shape=((source_len,), "
                         "(target_len,))")
    source = keras.Input(shape=tuple(input_shape[0]), dtype="int32", name="source")
    target = keras.Input(shape=tuple(input_shape[1]), dtype="int32", name="target")
    x, source_mask = _embed(source, source_vocab or num_outputs, model_dim, "source")
    x = SinusoidalPositionEncoding(scale_input=True, name="source_positions")(x)
    x = keras.layers.Dropout(dropout, name="source_dropout")(x)
    for i in range(num_layers):
        x = TransformerEncoderBlock(num_heads, model_dim, mlp_dim, dropout, norm_first,
                                    activation, name=f"encoder_{i}")(x, padding_mask=source_mask)
    if norm_first:
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    y, target_mask = _embed(target, num_outputs, model_dim, "target")
    y = SinusoidalPositionEncoding(scale_input=True, name="target_positions")(y)
    y = keras.layers.Dropout(dropout, name="target_dropout")(y)
    for i in range(num_layers):
        y = TransformerDecoderBlock(num_heads, model_dim, mlp_dim, dropout, norm_first,
                                    activation, name=f"decoder_{i}")(
            y, x, padding_mask=target_mask, context_padding_mask=source_mask)
    if norm_first:
        y = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")(y)
    return keras.Model([source, target], output_head(y, num_outputs, task), name=name)
