"""A CLIP-style dual encoder (Radford et al. 2021): symmetric contrastive loss."""

import math

import keras
from keras import ops

from kdl.backend import CustomTrainModel
from kdl.losses import clip_loss
from kdl.models.generative.nets import encoder_net
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"widths": (8,), "embedding_dim": 4},
    "default": {"widths": (128,), "embedding_dim": 32, "text_embedding_dim": 32},
}


def text_encoder(length, vocab_size, out_dim, embedding_dim, name="text_encoder"):
    """Token ids `(length,)` -> `(out_dim,)`: embedding, mean over real tokens, Dense."""
    tokens = keras.Input(shape=(length,), dtype="int32", name=f"{name}_inputs")
    x = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding")(
        tokens)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dense(embedding_dim, activation="relu", name="hidden")(x)
    return keras.Model(tokens, keras.layers.Dense(out_dim, name="out")(x), name=name)


def _pair(data):
    if isinstance(data, tuple) and len(data) == 1:
        data = data[0]
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], tuple | list):
        data = data[0]
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError("CLIP trains on pairs: fit(x=[images, texts])")
    return data[0], data[1]


@keras.saving.register_keras_serializable(package="kdl")
class CLIP(CustomTrainModel):
    """Two encoders trained so that matching pairs have the most similar embeddings.

    Modality A (`image_shape`) goes through a dense/conv encoder; modality B is
    token ids (`text_length`, `vocab_size`) or, with `vocab_size=None`, real
    features of shape `text_shape`. Embeddings are L2-normalized; the logits
    are `exp(log_scale) * a @ b^T` and the loss is `kdl.losses.clip_loss`.

    Args:
        image_shape: shape of one example of modality A.
        text_length: tokens per example of modality B (with `vocab_size`).
        vocab_size: token vocabulary of modality B, or None for features.
        text_shape: feature shape of modality B when `vocab_size` is None.
        kind: encoder of modality A, "dense" or "conv".
        widths: widths of the modality-A encoder.
        embedding_dim: width of the joint embedding space.
        text_embedding_dim: token embedding width.
        temperature: initial temperature (0.07 in CLIP).
        learn_temperature: learn `log_scale` (clipped to a scale of 100) or keep it fixed.

    Call arguments:
        inputs: `[a, b]`; returns the normalized embeddings `(a_emb, b_emb)`.
    """

    log_names = ("loss", "scale")

    def __init__(self, image_shape, text_length=8, vocab_size=None, text_shape=None,
                 kind="dense", widths=(128,), embedding_dim=32, text_embedding_dim=16,
                 temperature=0.07, learn_temperature=True, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.text_length = text_length
        self.vocab_size = vocab_size
        self.text_shape = tuple(text_shape) if text_shape else None
        self.kind = kind
        self.widths = tuple(widths)
        self.embedding_dim = embedding_dim
        self.text_embedding_dim = text_embedding_dim
        self.temperature = temperature
        self.learn_temperature = learn_temperature
        self.image_encoder = encoder_net(self.image_shape, embedding_dim, kind, self.widths,
                                         name="image_encoder")
        if vocab_size:
            self.text_encoder = text_encoder(text_length, vocab_size, embedding_dim,
                                             text_embedding_dim)
        else:
            if not self.text_shape:
                raise ValueError("CLIP needs vocab_size (token input) or text_shape (features)")
            self.text_encoder = encoder_net(self.text_shape, embedding_dim, "dense",
                                            self.widths, name="text_encoder")
        self.log_scale = self.add_weight(
            shape=(), name="log_scale", trainable=learn_temperature,
            initializer=keras.initializers.Constant(math.log(1.0 / temperature)))
        self.built = True

    @staticmethod
    def _normalize(x):
        return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), -1, keepdims=True), 1e-12))

    def call(self, inputs, training=False):
        a, b = inputs
        return (self._normalize(self.image_encoder(a, training=training)),
                self._normalize(self.text_encoder(b, training=training)))

    def probe_features(self, images):
        """The image encoder's embedding (unnormalized), for linear probes."""
        return self.image_encoder(images, training=False)

    def logit_scale(self):
        return ops.exp(ops.minimum(self.log_scale, math.log(100.0)))

    def group_loss(self, group, data):
        a, b = _pair(data)
        ea = self.image_encoder(a, training=True)
        eb = self.text_encoder(b, training=True)
        scale = self.logit_scale()
        loss = clip_loss(ea, eb, scale)
        return loss, {"loss": loss, "scale": scale}

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape,
                "text_length": self.text_length, "vocab_size": self.vocab_size,
                "text_shape": self.text_shape, "kind": self.kind, "widths": self.widths,
                "embedding_dim": self.embedding_dim,
                "text_embedding_dim": self.text_embedding_dim, "temperature": self.temperature,
                "learn_temperature": self.learn_temperature}


def _example(rng, batch):
    a = rng.normal(size=(batch, 8, 8, 1)).astype("float32")
    b = rng.integers(1, 10, size=(batch, 5)).astype("int32")
    return [a, b], [a, b]


@MODELS.register("clip", presets=PRESETS, tasks=("self_supervised",), data_arg="input_shapes",
                 harness={"kwargs": {"image_shape": (8, 8, 1), "text_length": 5,
                                     "vocab_size": 10}, "example": _example,
                          "output_shape": (4,)})
def clip(image_shape=None, *, input_shapes=None, text_length=8, vocab_size=None,
         text_shape=None, kind="dense", widths=(128,), embedding_dim=32, text_embedding_dim=16,
         temperature=0.07, learn_temperature=True, name="clip"):
    """A `CLIP` dual encoder (see the class).

    `input_shapes=(image_shape, (text_length,))` (token modality, with
    `vocab_size`) or `(image_shape, text_shape)` (features) sets both
    modalities' shapes from a two-input dataset, as the train stage does.
    """
    if input_shapes is not None:
        if len(input_shapes) != 2:
            raise ValueError(f"CLIP takes two inputs (images, texts); the data has "
                             f"{len(input_shapes)}: {input_shapes}")
        image_shape, second = tuple(input_shapes[0]), tuple(input_shapes[1])
        if vocab_size:
            if len(second) != 1:
                raise ValueError(f"token input is (length,), got {second}; for features "
                                 "leave vocab_size unset")
            text_length = second[0]
        else:
            text_shape = second
    if image_shape is None:
        raise ValueError("clip needs image_shape (or input_shapes from two-input data)")
    return CLIP(image_shape, text_length, vocab_size, text_shape, kind, widths, embedding_dim,
                text_embedding_dim, temperature, learn_temperature, name=name)
