"""Generative recipes: data scaled to [-1, 1] (tanh generators, DDPM x_0 clipping), the
sample-quality figure, and (slow) the recipes reaching their bar through the train stage."""

import numpy as np
import pytest

from kdl.data import load_splits
from kdl.data.core import Normalizer
from kdl.models.generative import classifier_confidence
from pipelines.config import load_config


def test_symmetric_normalizer_maps_the_training_range_to_minus_one_one():
    x = np.random.default_rng(0).uniform([0, -5, 3], [16, 5, 3], size=(50, 3)).astype("float32")
    norm = Normalizer.fit_symmetric(x)
    z = norm(x)
    np.testing.assert_allclose(z[:, :2].min(0), -1, atol=1e-6)
    np.testing.assert_allclose(z[:, :2].max(0), 1, atol=1e-6)
    np.testing.assert_allclose(z[:, 2], 0, atol=1e-6)  # a constant feature is only centred
    np.testing.assert_allclose(Normalizer.from_dict(norm.to_dict())(x), z)


def test_digits_load_in_tanh_range_and_recipes_ask_for_it():
    splits = load_splits("digits", normalize="symmetric")
    assert splits.train.x.min() == -1 and splits.train.x.max() == 1
    # test images are scaled with the training range, so they stay close to it
    assert -1.01 <= splits.test.x.min() and splits.test.x.max() <= 1.01
    for name in ("gan_digits", "dcgan_digits"):
        cfg = load_config(name)
        assert cfg.data.normalize == "symmetric" and cfg.model.name in ("gan", "dcgan")
    with pytest.raises(ValueError, match="'symmetric'"):
        load_splits("digits", normalize="minmax")


def test_gan_recipes_set_adams_beta_1_and_it_reaches_the_optimizer():
    from kdl.training import make_optimizer
    from pipelines.config import ConfigError

    cfg = load_config("dcgan_digits")
    assert cfg.train.beta_1 == 0.5
    assert make_optimizer(cfg.train, 10).beta_1 == 0.5
    assert make_optimizer(load_config("digits_cnn").train, 10).beta_1 == 0.9
    with pytest.raises(ConfigError, match="train.beta_1.*adam or adamw"):
        load_config("gan_digits", ["train.optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        load_config("gan_digits", ["train.beta_1=1.5"])


def test_classifier_confidence_tells_digits_from_noise():
    splits = load_splits("digits", seed=0)
    scores = classifier_confidence(splits.test.x[:64], splits.train.x, splits.train.y)
    assert scores["sample_confidence"] > 0.8
    assert scores["sample_confidence"] > scores["noise_confidence"] + 0.1
    with pytest.raises(ValueError, match="do not match"):
        classifier_confidence(np.zeros((4, 4, 4, 1)), splits.train.x, splits.train.y)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gan_digits", "dcgan_digits", "ddpm_digits"])
def test_generative_recipe_samples_look_like_digits(name, tmp_path):
    from pipelines.run import run_pipeline

    cfg = load_config(name, [f"output_dir={tmp_path}", "tracking.enabled=false",
                             "train.verbose=0"])
    run_dir, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    m = results["train"]
    print(f"{name}: sample_confidence {m['sample_confidence']:.3f}, "
          f"noise {m['noise_confidence']:.3f}")
    assert (run_dir / "samples.png").stat().st_size > 0
    assert m["sample_confidence"] > 0.7
    assert m["sample_confidence"] > m["noise_confidence"] + 0.1
