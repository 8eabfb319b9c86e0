"""Custom-training models learn on digits (slow): reconstruction below the mean-image
baseline, samples a digits classifier is confident about, linear probes above a
random encoder."""

import keras
import numpy as np
import pytest

from kdl.data import load_splits
from kdl.models.contrastive import SimCLR
from kdl.models.generative import (
    DDPM,
    GAN,
    VAE,
    Autoencoder,
    classifier_confidence,
    save_image_grid,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", seed=0)


def probe(train_z, train_y, test_z, test_y):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(train_z, train_y)
    return clf.score(test_z, test_y)


def embed(fn, x):
    return keras.ops.convert_to_numpy(fn(x))


@pytest.mark.parametrize("cls", [Autoencoder, VAE], ids=["autoencoder", "vae"])
def test_reconstruction_beats_the_mean_image(cls, digits):
    model = cls((8, 8, 1), latent_dim=16, kind="dense", widths=(256, 128))
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(digits.train.x, batch_size=64, epochs=60, verbose=0)
    recon = keras.ops.convert_to_numpy(model.predict(digits.test.x, verbose=0))
    mse = float(np.mean((recon - digits.test.x) ** 2))
    baseline = float(np.mean((digits.train.x.mean(0) - digits.test.x) ** 2))
    assert mse < 0.6 * baseline, f"mse {mse:.3f} vs mean-image {baseline:.3f}"


@pytest.mark.parametrize("kind", ["dcgan", "ddpm"])
def test_samples_look_like_digits(kind, digits, tmp_path):
    if kind == "dcgan":
        # the tanh generator's range: digits scaled to [-1, 1] (data.normalize: symmetric)
        data = load_splits("digits", seed=0, normalize="symmetric")
        model = GAN((8, 8, 1), latent_dim=32, architecture="dcgan", widths=(64, 32))
        model.compile({"discriminator": keras.optimizers.Adam(2e-4, beta_1=0.5),
                       "generator": keras.optimizers.Adam(2e-4, beta_1=0.5)})
        model.fit(data.train.x, batch_size=64, epochs=80, verbose=0)
    else:
        # [-1, 1] data so that sampling can clip its x_0 estimates; cosine betas; an MLP
        # noise net (cheap on 8x8); warmup-cosine rate; samples from the EMA of the weights
        data = load_splits("digits", seed=0, normalize="symmetric")
        keras.utils.set_random_seed(0)
        model = DDPM((8, 8, 1), timesteps=200, schedule="cosine", kind="mlp",
                     widths=(512, 512, 512), time_dim=64, clip_denoised=1.0)
        epochs, batch = 150, 32
        total = epochs * -(-len(data.train.x) // batch)
        lr = keras.optimizers.schedules.CosineDecay(0.0, total - total // 20,
                                                    warmup_target=2e-3,
                                                    warmup_steps=total // 20)
        model.compile(keras.optimizers.Adam(lr, use_ema=True, ema_momentum=0.998))
        model.fit(data.train.x, batch_size=batch, epochs=epochs, verbose=0)
    samples = model.sample(64)
    path = save_image_grid(samples, tmp_path / f"{kind}_samples.png")
    assert path.stat().st_size > 0
    # a classifier of the real digits, on the samples and on moment-matched noise
    scores = classifier_confidence(samples, data.train.x, data.train.y)
    conf, noise_conf = scores["sample_confidence"], scores["noise_confidence"]
    print(f"{kind}: digits-classifier confidence {conf:.3f} on samples, {noise_conf:.3f} on noise")
    assert conf > 0.7 and conf > noise_conf + 0.1, f"{conf:.2f} vs noise {noise_conf:.2f}"


def test_simclr_linear_probe_beats_a_random_encoder(digits):
    model = SimCLR((8, 8, 1), kind="conv", widths=(32, 64), representation_dim=64,
                   projection_dim=32, temperature=0.2)
    random_acc = probe(embed(model, digits.train.x), digits.train.y,
                       embed(model, digits.test.x), digits.test.y)
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(digits.train.x, batch_size=256, epochs=60, verbose=0)
    acc = probe(embed(model, digits.train.x), digits.train.y, embed(model, digits.test.x),
                digits.test.y)
    print(f"simclr: linear probe {acc:.3f}, random encoder {random_acc:.3f}")
    assert acc >= random_acc + 0.03 and acc >= 0.9, f"{acc:.3f} vs random {random_acc:.3f}"


def test_clip_recipe_probe_beats_its_untrained_encoder(tmp_path):
    """`clip_digits` through the train stage: the image encoder's linear probe, trained
    on digits paired with generated captions, against the same encoder untrained."""
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    cfg = load_config("clip_digits", [f"output_dir={tmp_path}", "tracking.enabled=false",
                                      "train.verbose=0"])
    _, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    acc = results["train"]["test_probe_accuracy"]
    random_acc = results["train"]["test_probe_accuracy_untrained"]
    assert acc >= random_acc + 0.03 and acc >= 0.94, f"{acc:.3f} vs random {random_acc:.3f}"
