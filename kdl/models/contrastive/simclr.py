"""SimCLR (Chen et al. 2020): two augmented views, projection head, NT-Xent."""

import keras
from keras import ops

from kdl.backend import CustomTrainModel
from kdl.losses import nt_xent
from kdl.models.generative.nets import encoder_net, features
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"kind": "dense", "widths": (8,), "representation_dim": 4, "projection_dim": 4},
    "default": {"kind": "conv", "widths": (32, 64), "representation_dim": 64,
                "projection_dim": 32, "temperature": 0.2},
}


def augment(x, seed_generator, noise_std=0.3, mask_rate=0.2, max_shift=1):
    """Random views of a batch of images, keras.ops only: a random shift by up
    to `max_shift` pixels (zero fill), per-image contrast/brightness jitter,
    pixel dropout (`mask_rate`) and Gaussian noise. Tables get jitter, dropout
    and noise."""
    n = ops.shape(x)[0]
    if len(x.shape) == 4 and max_shift:
        pad = max_shift
        padded = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h, w = x.shape[1], x.shape[2]
        shift = keras.random.randint((2,), 0, 2 * pad + 1, seed=seed_generator)
        padded = ops.roll(padded, shift[0] - pad, axis=1)
        padded = ops.roll(padded, shift[1] - pad, axis=2)
        x = padded[:, pad:pad + h, pad:pad + w, :]
    shape = (n,) + (1,) * (len(x.shape) - 1)
    scale = keras.random.uniform(shape, 0.7, 1.3, seed=seed_generator)
    shift = keras.random.uniform(shape, -0.3, 0.3, seed=seed_generator)
    keep = ops.cast(keras.random.uniform(ops.shape(x), seed=seed_generator) >= mask_rate,
                    x.dtype)
    noise = noise_std * keras.random.normal(ops.shape(x), seed=seed_generator)
    return (x * scale + shift) * keep + noise


@keras.saving.register_keras_serializable(package="kdl")
class SimCLR(CustomTrainModel):
    """Contrastive self-supervised learning of an encoder.

    Each batch gives two random views per example (`augment`); encoder then the
    paper's two-layer projection head `g(h) = W2 relu(W1 h)` map them to `z1`,
    `z2`; the loss is NT-Xent. The
    encoder's output (the representation, before the head) is what `call`
    returns, for linear probes and downstream models.

    Args:
        input_shape: shape of one example.
        kind: encoder "dense" or "conv".
        widths: encoder widths.
        representation_dim: width of the representation.
        projection_dim: width of the projection head's output.
        temperature: NT-Xent temperature.
        seed: augmentation seed.

    Call arguments:
        x: a batch; returns its representations.
    """

    log_names = ("loss",)

    def __init__(self, input_shape, kind="conv", widths=(32, 64), representation_dim=64,
                 projection_dim=32, temperature=0.5, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.input_shape_ = tuple(input_shape)
        self.kind = kind
        self.widths = tuple(widths)
        self.representation_dim = representation_dim
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.seed = seed
        self.encoder = encoder_net(self.input_shape_, representation_dim, kind, self.widths)
        self.projection = keras.Sequential([
            keras.Input((representation_dim,)),
            keras.layers.Dense(representation_dim, activation="relu"),
            keras.layers.Dense(projection_dim),
        ], name="projection")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, x, training=False):
        return self.encoder(x, training=training)

    def group_loss(self, group, data):
        x = features(data)
        z1 = self.projection(self.encoder(augment(x, self.seed_generator), training=True))
        z2 = self.projection(self.encoder(augment(x, self.seed_generator), training=True))
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"loss": loss}

    def get_config(self):
        return {**super().get_config(), "input_shape": self.input_shape_, "kind": self.kind,
                "widths": self.widths, "representation_dim": self.representation_dim,
                "projection_dim": self.projection_dim, "temperature": self.temperature,
                "seed": self.seed}


def _example(rng, batch):
    x = rng.normal(size=(batch, 8, 8, 1)).astype("float32")
    return x, x


@MODELS.register("simclr", presets=PRESETS, tasks=("self_supervised",), data_arg="input_shape",
                 harness={"kwargs": {"input_shape": (8, 8, 1)}, "example": _example,
                          "output_shape": (4,)})
def simclr(input_shape, *, kind="conv", widths=(32, 64), representation_dim=64,
           projection_dim=32, temperature=0.5, seed=0, name="simclr"):
    """A `SimCLR` model (see the class)."""
    return SimCLR(input_shape, kind, widths, representation_dim, projection_dim, temperature,
                  seed, name=name)
