"""Vision Transformer (Dosovitskiy et al. 2020)."""

import keras

from kdl.layers import ClassToken, LearnedPositionEmbedding, PatchEmbedding, TransformerEncoderBlock
from kdl.models.heads import output_head
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"patch_size": 4, "model_dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    # for digits' 8x8: 16 patches of 2x2
    "default": {"patch_size": 2, "model_dim": 64, "num_heads": 4, "num_layers": 4,
                "mlp_dim": 128, "dropout": 0.1},
    # ViT-B/16: 86,567,656 parameters on 224x224x3 with 1000 classes
    "b16": {"patch_size": 16, "model_dim": 768, "num_heads": 12, "num_layers": 12,
            "mlp_dim": 3072},
}


@MODELS.register("vit", presets=PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (8, 8, 1)})
def vit(input_shape, num_outputs, *, task="classification", patch_size=16, model_dim=768,
        num_heads=12, num_layers=12, mlp_dim=3072, dropout=0.0, name="vit"):
    """ViT: patch embedding, class token, learned positions, pre-norm encoder, head
    on the class token.

    Args:
        input_shape: `(height, width, channels)`, sides divisible by `patch_size`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        patch_size: side of the square patches.
        model_dim, num_heads, num_layers, mlp_dim, dropout: the encoder.
    """
    if len(input_shape) != 3:
        raise ValueError(f"vit needs image input (height, width, channels), got {input_shape}")
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = PatchEmbedding(patch_size, model_dim, name="patches")(inputs)
    x = ClassToken(name="class_token")(x)
    x = LearnedPositionEmbedding(name="positions")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerEncoderBlock(num_heads, model_dim, mlp_dim, dropout, True, "gelu",
                                    name=f"encoder_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = x[:, 0]
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
