"""Dense and convolutional autoencoders (optionally denoising) and the VAE."""

import keras
import numpy as np
from keras import ops

from kdl.backend import CustomTrainModel
from kdl.losses import vae_elbo
from kdl.models.generative.nets import decoder_net, encoder_net, features
from kdl.registry import MODELS

AE_PRESETS = {
    "tiny": {"latent_dim": 2, "kind": "dense", "widths": (8,)},
    "default": {"latent_dim": 16, "kind": "dense", "widths": (128, 64)},
    "conv": {"latent_dim": 16, "kind": "conv", "widths": (32, 64)},
}


def _example(rng, batch):
    x = rng.normal(size=(batch, 8, 8, 1)).astype("float32")
    return x, x


@keras.saving.register_keras_serializable(package="kdl")
class Autoencoder(CustomTrainModel):
    """An autoencoder trained on reconstruction MSE; denoising when `noise_std > 0`.

    Args:
        input_shape: shape of one example (images for `kind="conv"`).
        latent_dim: width of the code.
        kind: "dense" or "conv".
        widths: hidden widths (encoder order; the decoder mirrors them).
        noise_std: std of the Gaussian noise added to the input during training
            (a denoising autoencoder); the target stays the clean input.
        seed: seed of the noise.

    Call arguments:
        x: a batch; returns its reconstruction.

    Example:

    ```python
    ae = Autoencoder((8, 8, 1), latent_dim=8, noise_std=0.3)
    ae.compile("adam")
    ae.fit(x_train, epochs=10)
    ```
    """

    log_names = ("loss",)

    def __init__(self, input_shape, latent_dim=16, kind="dense", widths=(128,), noise_std=0.0,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        self.input_shape_ = tuple(input_shape)
        self.latent_dim = latent_dim
        self.kind = kind
        self.widths = tuple(widths)
        self.noise_std = noise_std
        self.seed = seed
        self.encoder = encoder_net(self.input_shape_, latent_dim, kind, self.widths)
        self.decoder = decoder_net(self.input_shape_, latent_dim, kind, self.widths[::-1])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # all state exists: fit must not build on data it cannot call

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training=training), training=training)

    def group_loss(self, group, data):
        x = features(data)
        noisy = x
        if self.noise_std:
            noisy = x + self.noise_std * keras.random.normal(ops.shape(x),
                                                             seed=self.seed_generator)
        loss = ops.mean(ops.square(x - self(noisy, training=True)))
        return loss, {"loss": loss}

    def get_config(self):
        return {**super().get_config(), "input_shape": self.input_shape_,
                "latent_dim": self.latent_dim, "kind": self.kind, "widths": self.widths,
                "noise_std": self.noise_std, "seed": self.seed}


@MODELS.register("autoencoder", presets=AE_PRESETS, tasks=("generative",), data_arg="input_shape",
                 harness={"kwargs": {"input_shape": (8, 8, 1)}, "example": _example})
def autoencoder(input_shape, *, latent_dim=16, kind="dense", widths=(128,), noise_std=0.0,
                seed=0, name="autoencoder"):
    """An `Autoencoder` (see the class)."""
    return Autoencoder(input_shape, latent_dim, kind, widths, noise_std, seed, name=name)


VAE_PRESETS = {
    "tiny": {"latent_dim": 2, "kind": "dense", "widths": (8,)},
    "default": {"latent_dim": 8, "kind": "dense", "widths": (256, 128)},
    "conv": {"latent_dim": 8, "kind": "conv", "widths": (32, 64)},
}


@keras.saving.register_keras_serializable(package="kdl")
class VAE(CustomTrainModel):
    """A variational autoencoder (Kingma & Welling 2013), trained on `-ELBO`.

    The encoder gives `q(z|x) = N(mean, exp(log_var))`; a sample
    `z = mean + exp(log_var / 2) * eps` (the reparameterization trick) is decoded
    to the mean of a unit-variance Gaussian (`likelihood="gaussian"`, for
    standardized data) or to Bernoulli logits (`"bernoulli"`, data in [0, 1]).

    Args:
        input_shape: shape of one example.
        latent_dim: width of z.
        kind: "dense" or "conv".
        widths: hidden widths (encoder order; the decoder mirrors them).
        likelihood: "gaussian" or "bernoulli".
        beta: weight of the KL term (1 is the ELBO).
        seed: seed of the sampling noise.

    Call arguments:
        x: a batch; returns the decoding of the posterior mean (deterministic).
    """

    log_names = ("loss", "reconstruction", "kl")

    def __init__(self, input_shape, latent_dim=8, kind="dense", widths=(128,),
                 likelihood="gaussian", beta=1.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        if likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
        self.input_shape_ = tuple(input_shape)
        self.latent_dim = latent_dim
        self.kind = kind
        self.widths = tuple(widths)
        self.likelihood = likelihood
        self.beta = beta
        self.seed = seed
        self.encoder = encoder_net(self.input_shape_, 2 * latent_dim, kind, self.widths)
        self.decoder = decoder_net(self.input_shape_, latent_dim, kind, self.widths[::-1])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # all state exists: fit must not build on data it cannot call

    def encode(self, x, training=False):
        """`(mean, log_var)` of q(z|x)."""
        h = self.encoder(x, training=training)
        return h[:, : self.latent_dim], h[:, self.latent_dim:]

    def decode(self, z, training=False):
        out = self.decoder(z, training=training)
        return ops.sigmoid(out) if self.likelihood == "bernoulli" and not training else out

    def call(self, x, training=False):
        return self.decode(self.encode(x, training)[0], training=False)

    def sample(self, n, seed=0):
        """`n` samples from the prior through the decoder (data space)."""
        z = np.random.default_rng(seed).normal(size=(n, self.latent_dim)).astype("float32")
        return keras.ops.convert_to_numpy(self.decode(z))

    def group_loss(self, group, data):
        x = features(data)
        mean, log_var = self.encode(x, training=True)
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        z = mean + ops.exp(0.5 * log_var) * eps
        recon = self.decoder(z, training=True)
        _, ll, kl = vae_elbo(x, recon, mean, log_var, self.likelihood)
        loss = ops.mean(-ll + self.beta * kl)
        return loss, {"loss": loss, "reconstruction": -ops.mean(ll), "kl": ops.mean(kl)}

    def get_config(self):
        return {**super().get_config(), "input_shape": self.input_shape_,
                "latent_dim": self.latent_dim, "kind": self.kind, "widths": self.widths,
                "likelihood": self.likelihood, "beta": self.beta, "seed": self.seed}


@MODELS.register("vae", presets=VAE_PRESETS, tasks=("generative",), data_arg="input_shape",
                 harness={"kwargs": {"input_shape": (8, 8, 1)}, "example": _example})
def vae(input_shape, *, latent_dim=8, kind="dense", widths=(128,), likelihood="gaussian",
        beta=1.0, seed=0, name="vae"):
    """A `VAE` (see the class)."""
    return VAE(input_shape, latent_dim, kind, widths, likelihood, beta, seed, name=name)
