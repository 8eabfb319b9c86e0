"""NT-Xent and CLIP losses against NumPy; SimCLR/CLIP behaviour."""

import keras
import numpy as np
import pytest

from kdl.losses import clip_loss, nt_xent
from kdl.models.contrastive import CLIP, SimCLR, augment


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_nt_xent(z1, z2, t):
    z = np.concatenate([z1, z2]).astype("float64")
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    losses = []
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sims = np.array([z[i] @ z[k] / t for k in range(n2) if k != i])
        others = [k for k in range(n2) if k != i]
        losses.append(-(z[i] @ z[j] / t - np.log(np.exp(sims).sum())))
        assert j in others
    return np.mean(losses)


def np_clip(a, b, scale):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = scale * a @ b.T
    idx = np.arange(len(a))
    return 0.5 * (-np_log_softmax(logits)[idx, idx].mean()
                  - np_log_softmax(logits.T)[idx, idx].mean())


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_numpy(t):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 5, 3)).astype("float32")
    got = float(keras.ops.convert_to_numpy(nt_xent(z1, z2, t)))
    np.testing.assert_allclose(got, np_nt_xent(z1, z2, t), rtol=1e-4)


def test_nt_xent_is_low_for_aligned_views():
    z = np.eye(4, dtype="float32")
    aligned = float(keras.ops.convert_to_numpy(nt_xent(z, z, 0.1)))
    shuffled = float(keras.ops.convert_to_numpy(nt_xent(z, z[::-1], 0.1)))
    assert aligned < 0.01 < shuffled


def test_clip_loss_matches_numpy_and_is_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 6, 4)).astype("float32")
    got = float(keras.ops.convert_to_numpy(clip_loss(a, b, 10.0)))
    np.testing.assert_allclose(got, np_clip(a, b, 10.0), rtol=1e-4)
    swapped = float(keras.ops.convert_to_numpy(clip_loss(b, a, 10.0)))
    np.testing.assert_allclose(got, swapped, rtol=1e-5)


def test_clip_temperature_learnable_or_fixed():
    kw = dict(image_shape=(4,), text_shape=(3,), widths=(4,), embedding_dim=2)
    learn, fixed = CLIP(**kw), CLIP(**kw, learn_temperature=False)
    assert learn.log_scale.trainable and not fixed.log_scale.trainable
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(fixed.logit_scale())),
                               1 / 0.07, rtol=1e-5)
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")]
    for model in (learn, fixed):
        model.compile(keras.optimizers.Adam(0.05))
        model.fit(data, batch_size=8, verbose=0)
    assert float(keras.ops.convert_to_numpy(learn.log_scale)) != pytest.approx(np.log(1 / 0.07))
    assert float(keras.ops.convert_to_numpy(fixed.log_scale)) == pytest.approx(np.log(1 / 0.07))


def test_simclr_views_differ_and_keep_shape():
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    gen = keras.random.SeedGenerator(0)
    v1, v2 = (keras.ops.convert_to_numpy(augment(x, gen)) for _ in range(2))
    assert v1.shape == x.shape and not np.allclose(v1, v2)
    model = SimCLR((8, 8, 1), kind="dense", widths=(8,), representation_dim=5)
    assert model(x).shape == (3, 5)
