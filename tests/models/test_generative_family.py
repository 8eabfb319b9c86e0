"""Generative models: ELBO oracle, DCGAN flatten size, beta schedules, sampling."""

import keras
import numpy as np
import pytest

from kdl.losses import bce_with_logits, gaussian_kl, vae_elbo
from kdl.models.generative import DDPM, GAN, VAE, Autoencoder, beta_schedule


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def test_vae_elbo_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 4, 1)).astype("float32")
    rec = rng.normal(size=(3, 4, 4, 1)).astype("float32")
    mean = rng.normal(size=(3, 2)).astype("float32")
    log_var = rng.normal(size=(3, 2)).astype("float32")
    elbo, ll, kl = (to_np(t) for t in vae_elbo(x, rec, mean, log_var))
    ref_ll = np.array([-0.5 * np.sum((x[i] - rec[i]) ** 2 + np.log(2 * np.pi))
                       for i in range(3)])
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (s^2 + m^2 - 1 - log s^2), per dim
    ref_kl = 0.5 * np.sum(np.exp(log_var) + mean ** 2 - 1 - log_var, axis=1)
    np.testing.assert_allclose(ll, ref_ll, rtol=1e-5)
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-5)
    np.testing.assert_allclose(elbo, ref_ll - ref_kl, rtol=1e-5)
    assert np.allclose(to_np(gaussian_kl(np.zeros((1, 2), "float32"),
                                         np.zeros((1, 2), "float32"))), 0.0)


def test_bernoulli_elbo_and_stable_bce():
    logits = np.array([-100.0, -1.0, 0.0, 2.0, 100.0], "float32")
    labels = np.array([0.0, 1.0, 1.0, 0.0, 1.0], "float32")
    p = 1 / (1 + np.exp(-logits.astype("float64")))
    ref = -(labels * np.log(np.clip(p, 1e-300, 1)) + (1 - labels) * np.log(
        np.clip(1 - p, 1e-300, 1)))
    np.testing.assert_allclose(to_np(bce_with_logits(labels, logits)), ref, rtol=1e-5,
                               atol=1e-6)
    x = np.array([[[1.0, 0.0]]], "float32")
    _, ll, _ = vae_elbo(x, np.zeros_like(x), np.zeros((1, 1), "float32"),
                        np.zeros((1, 1), "float32"), "bernoulli")
    np.testing.assert_allclose(to_np(ll), [2 * np.log(0.5)], rtol=1e-5)


def test_vae_reparameterization_gradient_reaches_the_encoder():
    model = VAE((4,), latent_dim=2, widths=(4,))
    model.compile(keras.optimizers.SGD(0.1))
    before = [to_np(w).copy() for w in model.encoder.trainable_weights]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, batch_size=8, verbose=0)
    assert all(not np.array_equal(a, to_np(b))
               for a, b in zip(before, model.encoder.trainable_weights, strict=True))
    call = to_np(model(np.ones((2, 4), "float32")))
    np.testing.assert_array_equal(call, to_np(model(np.ones((2, 4), "float32"))))  # no noise


@pytest.mark.parametrize("shape,widths,expected", [((8, 8, 1), (4, 8), 2 * 2 * 4),
                                                   ((16, 16, 3), (4, 8, 5), 2 * 2 * 4)])
def test_dcgan_discriminator_flatten_size_follows_the_image(shape, widths, expected):
    gan = GAN(shape, latent_dim=3, architecture="dcgan", widths=widths)
    dense = gan.discriminator.get_layer("logit")
    # the discriminator uses the widths reversed; its last conv has widths[0] channels
    assert dense.kernel.shape == (expected, 1)
    assert gan.sample(2).shape == (2, *shape)


def test_dcgan_rejects_sizes_its_generator_cannot_make():
    with pytest.raises(ValueError, match="divisible"):
        GAN((10, 10, 1), architecture="dcgan", widths=(4, 4))


def test_gan_compile_gives_each_group_its_optimizer():
    gan = GAN((4,), latent_dim=2, widths=(4,))
    gan.compile({"discriminator": keras.optimizers.Adam(1e-3),
                 "generator": keras.optimizers.SGD(1e-2)})
    groups = {g: (len(v), type(o).__name__) for g, v, o in gan.train_groups()}
    assert groups == {"discriminator": (4, "Adam"), "generator": (4, "SGD")}
    hist = gan.fit(np.random.default_rng(0).normal(size=(8, 4)).astype("float32"),
                   batch_size=4, verbose=0)
    assert set(hist.history) == {"d_loss", "g_loss"}


def test_beta_schedules():
    lin = beta_schedule("linear", 1000)
    np.testing.assert_allclose([lin[0], lin[-1]], [1e-4, 0.02])
    cos = beta_schedule("cosine", 50)
    abar = np.cumprod(1 - cos)
    assert np.all(np.diff(abar) < 0) and abar[-1] < 1e-3 and cos.max() <= 0.999
    with pytest.raises(ValueError, match="schedule"):
        beta_schedule("quadratic", 10)


def test_ddpm_sampling_and_noise_target():
    model = DDPM((4, 4, 1), timesteps=5, widths=(4,), time_dim=4)
    out = model.sample(3, seed=1)
    assert out.shape == (3, 4, 4, 1) and np.all(np.isfinite(out))
    eps = to_np(model([np.zeros((2, 4, 4, 1), "float32"), np.array([0, 4], "int32")]))
    assert eps.shape == (2, 4, 4, 1)


def ho_sample(model, n, seed):
    """Ho et al.'s ancestral update, the oracle of the unclipped sampler."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *model.image_shape)).astype("float32")
    for t in range(model.timesteps - 1, -1, -1):
        eps = to_np(model.net([x, np.full((n,), t, "int32")]))
        beta, abar = model.betas[t], model.alpha_bars[t]
        mean = (x - beta / np.sqrt(1 - abar) * eps) / np.sqrt(1 - beta)
        x = (mean + np.sqrt(beta) * (rng.normal(size=x.shape) if t > 0 else 0.0))
        x = x.astype("float32")
    return x


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_ddpm_sampler_is_hos_update_and_clips_x0(kind):
    keras.utils.set_random_seed(0)  # one draw of the untrained net's weights, every run
    model = DDPM((4, 4, 1), timesteps=6, schedule="cosine", widths=(8,), time_dim=4,
                 kind=kind)
    want = ho_sample(model, 3, seed=2)
    # float32 round-off grows with |x| (this untrained net's samples reach ~500): the
    # tolerance scales with the output, 30x the largest difference seen (3.3e-7 of
    # max |x|, over 24 weight draws and a CI run); a wrong update is off by O(|x|)
    np.testing.assert_allclose(model.sample(3, seed=2), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    # with x_0 clipped to a tiny range the last step's output (= clipped x_0) is in it
    clipped = DDPM((4, 4, 1), timesteps=6, widths=(8,), time_dim=4, kind=kind,
                   clip_denoised=0.01)
    clipped.set_weights(model.get_weights())
    assert np.abs(clipped.sample(3, seed=2)).max() <= 0.01 + 1e-6
    assert DDPM.from_config(clipped.get_config()).clip_denoised == 0.01
    with pytest.raises(ValueError, match="kind"):
        DDPM((4, 4, 1), kind="unet")
    with pytest.raises(ValueError, match="clip_denoised"):
        DDPM((4, 4, 1), clip_denoised=0.0)


def test_denoising_autoencoder_trains_on_clean_targets():
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    model = Autoencoder((6,), latent_dim=6, widths=(16,), noise_std=0.1)
    model.compile(keras.optimizers.Adam(1e-2))
    hist = model.fit(x, batch_size=32, epochs=30, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
