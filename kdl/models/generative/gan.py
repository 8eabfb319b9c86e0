"""MLP GAN and DCGAN (Goodfellow et al. 2014; Radford et al. 2015), two optimizers."""

import keras
import numpy as np
from keras import ops

from kdl.backend import CustomTrainModel
from kdl.losses import bce_with_logits
from kdl.models.generative.nets import decoder_net, features
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"architecture": "mlp", "latent_dim": 4, "widths": (8,)},
    "default": {"architecture": "mlp", "latent_dim": 32, "widths": (256, 256)},
    "dcgan": {"architecture": "dcgan", "latent_dim": 32, "widths": (64, 32)},
    "dcgan_tiny": {"architecture": "dcgan", "latent_dim": 4, "widths": (8, 4)},
}


def discriminator_net(image_shape, architecture, widths, name="discriminator"):
    """Images -> one logit. DCGAN: stride-2 4x4 convs with LeakyReLU, then Dense.

    The flatten size is whatever the convolutions leave (`ceil(h / 2^k) *
    ceil(w / 2^k) * widths[-1]`), inferred by Keras from the image shape rather
    than written by hand (a classic bug in DCGAN ports).
    """
    inputs = keras.Input(shape=tuple(image_shape), name=f"{name}_inputs")
    x = inputs
    if architecture == "dcgan":
        for i, f in enumerate(widths):
            x = keras.layers.Conv2D(f, 4, strides=2, padding="same", name=f"conv_{i}")(x)
            x = keras.layers.LeakyReLU(0.2, name=f"lrelu_{i}")(x)
        x = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
        for i, u in enumerate(widths):
            x = keras.layers.Dense(u, name=f"dense_{i}")(x)
            x = keras.layers.LeakyReLU(0.2, name=f"lrelu_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="logit")(x), name=name)


@keras.saving.register_keras_serializable(package="kdl")
class GAN(CustomTrainModel):
    """A GAN with the non-saturating loss; discriminator and generator have their
    own optimizers and step in turn (discriminator first) every batch.

    Args:
        image_shape: shape of one real example (data scaled to about [-1, 1]).
        latent_dim: width of the noise z.
        architecture: "mlp" (Dense generator and discriminator) or "dcgan"
            (transposed-conv generator with BatchNorm, strided-conv discriminator).
        widths: hidden widths (generator from the bottleneck out for dcgan;
            the discriminator uses them reversed).
        seed: seed of the noise.

    Call arguments:
        z: noise `(batch, latent_dim)`; returns generated images (tanh).

    Example:

    ```python
    gan = GAN((8, 8, 1), architecture="dcgan", widths=(64, 32))
    gan.compile({"discriminator": keras.optimizers.Adam(2e-4, beta_1=0.5),
                 "generator": keras.optimizers.Adam(2e-4, beta_1=0.5)})
    gan.fit(x_train, epochs=50)
    ```
    """

    log_names = ("d_loss", "g_loss")

    def __init__(self, image_shape, latent_dim=32, architecture="mlp", widths=(256,), seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        if architecture not in ("mlp", "dcgan"):
            raise ValueError(f"architecture must be 'mlp' or 'dcgan', got {architecture!r}")
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.architecture = architecture
        self.widths = tuple(widths)
        self.seed = seed
        kind = "conv" if architecture == "dcgan" else "dense"
        self.generator = decoder_net(self.image_shape, latent_dim, kind, self.widths,
                                     activation="tanh", batch_norm=kind == "conv",
                                     name="generator")
        self.discriminator = discriminator_net(self.image_shape, architecture,
                                               self.widths[::-1])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # all state exists: fit must not build on data it cannot call

    def call(self, z, training=False):
        return self.generator(z, training=training)

    def sample(self, n, seed=0):
        z = np.random.default_rng(seed).normal(size=(n, self.latent_dim)).astype("float32")
        return keras.ops.convert_to_numpy(self.generator(z, training=False))

    def optimizer_groups(self):
        return {"discriminator": self.discriminator.trainable_variables,
                "generator": self.generator.trainable_variables}

    def group_loss(self, group, data):
        real = features(data)
        z = keras.random.normal((ops.shape(real)[0], self.latent_dim), seed=self.seed_generator)
        fake = self.generator(z, training=True)
        fake_logits = self.discriminator(fake, training=True)
        if group == "discriminator":
            real_logits = self.discriminator(real, training=True)
            loss = (ops.mean(bce_with_logits(ops.ones_like(real_logits), real_logits))
                    + ops.mean(bce_with_logits(ops.zeros_like(fake_logits), fake_logits)))
            return loss, {"d_loss": loss}
        loss = ops.mean(bce_with_logits(ops.ones_like(fake_logits), fake_logits))
        return loss, {"g_loss": loss}

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape,
                "latent_dim": self.latent_dim, "architecture": self.architecture,
                "widths": self.widths, "seed": self.seed}


def _example(rng, batch):
    z = rng.normal(size=(batch, 4)).astype("float32")
    return z, rng.uniform(-1, 1, size=(batch, 8, 8, 1)).astype("float32")


@MODELS.register("gan", presets=PRESETS, tasks=("generative",), data_arg="image_shape",
                 harness={"kwargs": {"image_shape": (8, 8, 1)}, "example": _example,
                          "output_shape": (8, 8, 1)})
def gan(image_shape, *, latent_dim=32, architecture="mlp", widths=(256,), seed=0, name="gan"):
    """A `GAN` (see the class)."""
    return GAN(image_shape, latent_dim, architecture, widths, seed, name=name)


@MODELS.register("dcgan", presets={"tiny": PRESETS["dcgan_tiny"], "default": PRESETS["dcgan"]},
                 tasks=("generative",), data_arg="image_shape",
                 harness={"kwargs": {"image_shape": (8, 8, 1)}, "example": _example,
                          "output_shape": (8, 8, 1)})
def dcgan(image_shape, *, latent_dim=32, architecture="dcgan", widths=(64, 32), seed=0,
          name="dcgan"):
    """A convolutional `GAN` (DCGAN)."""
    return GAN(image_shape, latent_dim, architecture, widths, seed, name=name)
