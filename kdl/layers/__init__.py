"""Custom layers shared by the model zoo (keras.ops only, registered as "kdl>Name")."""

from kdl.layers.attention import (
    MaskedMeanPooling,
    PaddingMask,
    SinusoidalPositionEncoding,
    TimestepEmbedding,
    TransformerAttention,
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
    "PaddingMask",
    "PatchEmbedding",
    "SinusoidalPositionEncoding",
    "TransformerAttention",
    "TransformerDecoderBlock",
    "TimestepEmbedding",
    "TransformerEncoderBlock",
    "causal_mask",
    "mask_logits",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
from kdl.layers.recurrent import BahdanauAttention  # noqa: E402

__all__ += ["BahdanauAttention"]


def __getattr__(name):
    """The old names `MultiHeadAttention` and `AdditiveAttention`, with a DeprecationWarning."""
    from kdl.layers import attention, recurrent

    for module in (attention, recurrent):
        try:
            return module.__getattr__(name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'kdl.layers' has no attribute {name!r}")
