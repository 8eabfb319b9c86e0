"""A small denoising diffusion model (Ho et al. 2020): noise prediction, sampling."""

import math

import keras
import numpy as np
from keras import ops

from kdl.backend import CustomTrainModel
from kdl.layers import TimestepEmbedding
from kdl.models.generative.nets import features
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"timesteps": 10, "widths": (4, 4), "time_dim": 4},
    "default": {"timesteps": 200, "schedule": "cosine", "kind": "mlp", "widths": (512, 512, 512),
                "time_dim": 64},
}


def beta_schedule(kind: str, timesteps: int) -> np.ndarray:
    """Noise variances beta_1..beta_T: "linear" (Ho et al., 1e-4..0.02 scaled to T)
    or "cosine" (Nichol & Dhariwal 2021, clipped at 0.999)."""
    if kind == "linear":
        scale = 1000.0 / timesteps
        return np.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype="float64")
    if kind == "cosine":
        s = 0.008
        t = np.arange(timesteps + 1, dtype="float64") / timesteps
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")


KINDS = ("conv", "mlp")


def noise_net(image_shape, widths, time_dim, kind="conv", name="noise_net"):
    """`[x_t, t] -> predicted noise`: residual blocks, each adding a projection of
    the timestep embedding. "conv": 3x3 conv blocks at full resolution (small
    images); "mlp": Dense blocks on the flattened image (far cheaper on tiny
    images such as 8x8 digits)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    conv = kind == "conv"

    def block(units, name, kernel=3, **kw):  # the layer of `kind`: 3x3 conv or Dense
        if conv:
            return keras.layers.Conv2D(units, kernel, padding="same", name=name, **kw)
        return keras.layers.Dense(units, name=name, **kw)

    prefix = "conv" if conv else "dense"
    x_in = keras.Input(shape=tuple(image_shape), name="x_t")
    t_in = keras.Input(shape=(), dtype="int32", name="t")
    temb = TimestepEmbedding(time_dim, name="time_embedding")(t_in)
    temb = keras.layers.Dense(time_dim, activation="swish", name="time_mlp")(temb)
    h = x_in if conv else keras.layers.Flatten(name="flatten")(x_in)
    h = block(widths[0], "stem")(h)
    for i, f in enumerate(widths):
        bias = keras.layers.Dense(f, name=f"time_{i}")(temb)
        if conv:
            bias = keras.layers.Reshape((1, 1, f), name=f"time_{i}_reshape")(bias)
        r = h if h.shape[-1] == f else block(f, f"skip_{i}", kernel=1)(h)
        h = block(f, f"{prefix}_{i}a")(h)
        h = keras.layers.Activation("swish", name=f"act_{i}a")(keras.layers.Add()([h, bias]))
        h = block(f, f"{prefix}_{i}b", activation="swish")(h)
        h = keras.layers.Add(name=f"res_{i}")([r, h])
    if conv:
        out = block(image_shape[-1], "out")(h)
    else:
        out = keras.layers.Dense(math.prod(image_shape), name="out")(h)
        out = keras.layers.Reshape(tuple(image_shape), name="out_reshape")(out)
    return keras.Model([x_in, t_in], out, name=name)


@keras.saving.register_keras_serializable(package="kdl")
class DDPM(CustomTrainModel):
    """A denoising diffusion probabilistic model for small images.

    Training draws t uniformly, noises the batch to
    `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps` and regresses eps (MSE).
    `sample` runs the T-step ancestral sampler.

    Args:
        image_shape: `(height, width, channels)` of the (standardized) images.
        timesteps: T.
        schedule: "linear" or "cosine" betas.
        widths: channels of the noise network's blocks.
        time_dim: width of the timestep embedding.
        seed: seed of the training noise.
        kind: the noise network, "conv" (3x3 convolutions) or "mlp" (Dense
            layers on the flattened image).
        clip_denoised: when sampling, clip each step's estimate of x_0 to
            `[-clip_denoised, clip_denoised]` before taking the posterior mean
            (1.0 for data scaled to [-1, 1]; None: no clipping, Ho et al.'s
            update).

    Call arguments:
        inputs: `[x_t, t]`; returns the predicted noise.
    """

    log_names = ("loss",)

    def __init__(self, image_shape, timesteps=200, schedule="linear", widths=(64, 64),
                 time_dim=32, seed=0, clip_denoised=None, kind="conv", **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.timesteps = timesteps
        self.schedule = schedule
        self.widths = tuple(widths)
        self.time_dim = time_dim
        self.seed = seed
        if clip_denoised is not None and clip_denoised <= 0:
            raise ValueError(f"clip_denoised must be > 0 or None, got {clip_denoised}")
        self.clip_denoised = clip_denoised
        self.kind = kind
        self.betas = beta_schedule(schedule, timesteps)
        self.alpha_bars = np.cumprod(1.0 - self.betas)
        self.net = noise_net(self.image_shape, self.widths, time_dim, kind)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # all state exists: fit must not build on data it cannot call

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    def group_loss(self, group, data):
        x0 = features(data)
        n = ops.shape(x0)[0]
        t = keras.random.randint((n,), 0, self.timesteps, seed=self.seed_generator)
        eps = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        abar = ops.take(ops.convert_to_tensor(self.alpha_bars.astype("float32")), t)
        abar = ops.reshape(abar, (-1, 1, 1, 1))
        x_t = ops.sqrt(abar) * x0 + ops.sqrt(1.0 - abar) * eps
        loss = ops.mean(ops.square(eps - self.net([x_t, ops.cast(t, "int32")], training=True)))
        return loss, {"loss": loss}

    def sample(self, n, seed=0):
        """`n` images by ancestral sampling from x_T ~ N(0, I) (NumPy loop).

        Each step estimates x_0 from the predicted noise (clipped with
        `clip_denoised`), takes the mean of q(x_{t-1} | x_t, x_0) and adds
        noise of variance beta_t; unclipped, this is Ho et al.'s update.
        """
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, *self.image_shape)).astype("float32")
        for t in range(self.timesteps - 1, -1, -1):
            # predict_on_batch: one compiled function for all steps (eager calls are ~3x slower)
            eps = np.asarray(self.net.predict_on_batch([x, np.full((n,), t, "int32")]))
            beta, abar = self.betas[t], self.alpha_bars[t]
            abar_prev = self.alpha_bars[t - 1] if t > 0 else 1.0
            x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
            if self.clip_denoised is not None:
                x0 = np.clip(x0, -self.clip_denoised, self.clip_denoised)
            mean = (beta * math.sqrt(abar_prev) / (1 - abar) * x0
                    + (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar) * x)
            noise = rng.normal(size=x.shape) if t > 0 else 0.0
            x = (mean + math.sqrt(beta) * noise).astype("float32")
        return x

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape,
                "timesteps": self.timesteps, "schedule": self.schedule, "widths": self.widths,
                "time_dim": self.time_dim, "seed": self.seed,
                "clip_denoised": self.clip_denoised, "kind": self.kind}


def _example(rng, batch):
    x = rng.normal(size=(batch, 8, 8, 1)).astype("float32")
    return [x, rng.integers(0, 10, size=(batch,)).astype("int32")], x


@MODELS.register("ddpm", presets=PRESETS, tasks=("generative",), data_arg="image_shape",
                 harness={"kwargs": {"image_shape": (8, 8, 1)}, "example": _example,
                          "output_shape": (8, 8, 1)})
def ddpm(image_shape, *, timesteps=200, schedule="linear", widths=(64, 64), time_dim=32,
         seed=0, clip_denoised=None, kind="conv", name="ddpm"):
    """A `DDPM` (see the class)."""
    return DDPM(image_shape, timesteps, schedule, widths, time_dim, seed, clip_denoised, kind,
                name=name)
