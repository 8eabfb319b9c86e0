"""Custom layers shared by the model zoo (keras.ops only, registered as "kdl>Name")."""

from kdl.layers.attention import (
    MaskedMeanPooling,
    MultiHeadAttention,
    PaddingMask,
    SinusoidalPositionEncoding,
    TimestepEmbedding,
    causal_mask,
    mask_logits,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)
from kdl.layers.transformer import (
    ClassToken,
    LearnedPositionEmbedding,
    PatchEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)

__all__ = [
    "ClassToken",
    "MaskedMeanPooling",
    "LearnedPositionEmbedding",
    "MultiHeadAttention",
    "PaddingMask",
    "PatchEmbedding",
    "SinusoidalPositionEncoding",
    "TransformerDecoderBlock",
    "TimestepEmbedding",
    "TransformerEncoderBlock",
    "causal_mask",
    "mask_logits",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
from kdl.layers.recurrent import AdditiveAttention  # noqa: E402

__all__ += ["AdditiveAttention"]
