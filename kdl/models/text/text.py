"""Text classifiers over token ids: a bag-of-embeddings baseline and KerasHub BERT-family
backbones with a kdl head. (kdl's own `transformer_classifier` takes token ids too.)

Every model takes ONE int32 input, `(sequence_length,)` token ids with 0 as padding;
padding masks (and BERT's segment ids) are computed inside the model, so the
exported `.tflite` has a single integer input and builtin ops only.
"""

import keras
from keras import ops

from kdl.layers import MaskedMeanPooling, PaddingMask
from kdl.models.heads import output_head
from kdl.registry import MODELS

BOE_PRESETS = {
    "tiny": {"embed_dim": 8, "hidden": 8},
    "default": {"embed_dim": 64, "hidden": 64, "dropout": 0.1},
}


def _token_input(input_shape, vocab_size, name):
    if len(input_shape) != 1 or not vocab_size:
        raise ValueError(f"{name} takes token ids: input_shape=(sequence_length,) and "
                         f"vocab_size (got {input_shape} and {vocab_size})")
    return keras.Input(shape=tuple(input_shape), dtype="int32", name="token_ids")


@MODELS.register("bag_of_embeddings", presets=BOE_PRESETS, tasks=("classification",
                 "regression"), harness={"input_shape": (6,), "vocab": 20,
                                         "kwargs": {"vocab_size": 20}})
def bag_of_embeddings(input_shape, num_outputs, *, task="classification", vocab_size=None,
                      embed_dim=64, hidden=64, dropout=0.0, name="bag_of_embeddings"):
    """Mean of the token embeddings (padding excluded), a hidden layer, a head.

    Word order is invisible to it: the mobile-cheap baseline an order-aware
    model must beat.

    Args:
        input_shape: `(sequence_length,)` int32 token ids, 0 = padding.
        num_outputs: classes (classification) or targets (regression).
        vocab_size: the tokenizer's vocabulary size.
        embed_dim, hidden, dropout: widths and the dropout before the head.
    """
    inputs = _token_input(input_shape, vocab_size, "bag_of_embeddings")
    x = keras.layers.Embedding(vocab_size, embed_dim, name="embedding")(inputs)
    x = MaskedMeanPooling(name="pool")(x, inputs)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)


@keras.saving.register_keras_serializable(package="kdl")
class ZerosLike(keras.layers.Layer):
    """`zeros_like(tokens)` in int32: BERT's segment ids for single-segment input."""

    def call(self, tokens):
        return ops.zeros_like(tokens, dtype="int32")

    def compute_output_spec(self, tokens):
        return keras.KerasTensor(tokens.shape, dtype="int32")


@keras.saving.register_keras_serializable(package="kdl")
class FirstToken(keras.layers.Layer):
    """`x[:, 0]`: the first position's features ([CLS] for BERT-family backbones)."""

    def call(self, x):
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[2:])


BERT_PRESETS = {
    "tiny": {"num_layers": 1, "num_heads": 2, "hidden_dim": 8, "intermediate_dim": 16},
    "default": {"num_layers": 2, "num_heads": 4, "hidden_dim": 64, "intermediate_dim": 128,
                "dropout": 0.1},
}
BACKBONES = ("bert", "distil_bert")


def _hub_backbone(arch, checkpoint, vocab_size, sequence_length, **dims):
    """A KerasHub backbone: from `checkpoint` (local preset or `hf:` dir) or a fresh config."""
    import keras_hub

    if checkpoint:
        from kdl.transfer import load_backbone

        source = checkpoint if checkpoint.startswith(("hf:", "kerashub:")) else \
            f"kerashub:{checkpoint}"
        backbone = load_backbone(source)
        wanted = {"bert": keras_hub.models.BertBackbone,
                  "distil_bert": keras_hub.models.DistilBertBackbone}[arch]
        if not isinstance(backbone, wanted):
            raise ValueError(f"checkpoint {checkpoint!r} is a {type(backbone).__name__}, not a "
                             f"{wanted.__name__}: set model.params.backbone accordingly")
        if backbone.vocabulary_size != vocab_size:
            raise ValueError(f"checkpoint {checkpoint!r} has {backbone.vocabulary_size} tokens "
                             f"but the tokenizer {vocab_size}: load the tokenizer from the same "
                             "directory (tokenizer.preset)")
        if backbone.max_sequence_length < sequence_length:
            raise ValueError(f"checkpoint {checkpoint!r} takes at most "
                             f"{backbone.max_sequence_length} tokens; lower "
                             "tokenizer.sequence_length")
        return backbone
    common = dict(vocabulary_size=vocab_size, max_sequence_length=sequence_length, **dims)
    if arch == "bert":
        return keras_hub.models.BertBackbone(**common)
    return keras_hub.models.DistilBertBackbone(**common)


@MODELS.register("bert_classifier", presets=BERT_PRESETS, tasks=("classification",
                 "regression"), harness={"input_shape": (6,), "vocab": 20,
                                         "kwargs": {"vocab_size": 20},
                                         "mixed_policy": {"jax": "mixed_bfloat16"}})
def bert_classifier(input_shape, num_outputs, *, task="classification", vocab_size=None,
                    backbone="bert", checkpoint=None, num_layers=2, num_heads=4,
                    hidden_dim=64, intermediate_dim=128, dropout=0.0,
                    name="bert_classifier"):
    """A KerasHub BERT-family backbone on token ids, its [CLS] features, a kdl head.

    BERT's head reads the backbone's pooled output (its pretrained pooler over the
    first position), DistilBERT's the first position of the sequence output, as
    KerasHub's own text classifiers do; the tokenizer should add `[CLS]`/`[SEP]`
    (`tokenizer.start_token`, `end_token`).

    Args:
        input_shape: `(sequence_length,)` int32 token ids, 0 = padding.
        num_outputs: classes (classification) or targets (regression).
        vocab_size: the tokenizer's vocabulary size.
        backbone: "bert" (`keras_hub.models.BertBackbone`) or "distil_bert".
        checkpoint: fine-tune from a local KerasHub preset directory
            (`kerashub:<dir>` or a bare path) or a Hugging Face checkpoint
            (`hf:<dir>`); None builds the backbone from the sizes below (scratch).
        num_layers, num_heads, hidden_dim, intermediate_dim, dropout: a scratch
            backbone's sizes (ignored with `checkpoint`).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    inputs = _token_input(input_shape, vocab_size, "bert_classifier")
    hub = _hub_backbone(backbone, checkpoint, vocab_size, int(input_shape[0]),
                        num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                        intermediate_dim=intermediate_dim, dropout=dropout)
    features = {"token_ids": inputs, "padding_mask": PaddingMask(name="padding_mask")(inputs)}
    if backbone == "bert":
        features["segment_ids"] = ZerosLike(name="segment_ids")(inputs)
        x = hub(features)["pooled_output"]  # BERT's pooler: tanh(dense([CLS] features))
    else:
        x = FirstToken(name="first_token")(hub(features))
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)

