"""Explanations and attacks on every backend: Integrated Gradients against w·x and
completeness, Grad-CAM on a model whose evidence sits in a known region, FGSM/PGD.

The fast tests use small models with set weights; the digits-CNN tests (a trained
ReLU CNN: IG completeness, accuracy falling with epsilon) are `slow`."""

import keras
import numpy as np
import pytest

from kdl import evaluate as ev
from kdl.data import load_splits
from kdl.models import build_model


def test_ig_of_a_linear_model_with_zero_baseline_is_w_times_x():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    model.layers[-1].bias.assign(np.array([0.7], "float32"))
    w = keras.ops.convert_to_numpy(model.layers[-1].kernel)[:, 0]
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    attributions = ev.integrated_gradients(model, x, steps=8)
    np.testing.assert_allclose(attributions, x * w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attributions.sum(1), x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ev.gradients(model, x), np.broadcast_to(w, x.shape), rtol=1e-6)


def smooth_image_model():
    """A tanh CNN with average pooling: a smooth path integrand."""
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(6, 3, activation="tanh"),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])


@pytest.mark.parametrize("kind", ["zero", "blurred", "random"])
def test_ig_completeness_at_64_steps_on_a_smooth_model(kind):
    model = smooth_image_model()
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype("float32") * 2
    y = np.arange(6) % 3
    attributions = ev.integrated_gradients(model, x, y, baseline_kind=kind, steps=64)
    gap = ev.completeness_gap(model, x, attributions, y, baseline_kind=kind)
    assert np.all(gap < 0.01), gap
    coarse = ev.integrated_gradients(model, x, y, baseline_kind=kind, steps=1)
    assert ev.completeness_gap(model, x, coarse, y, baseline_kind=kind).max() > 0.01


@pytest.fixture(scope="module")
def digits_cnn():
    """A tiny CNN trained briefly on scikit-learn's digits (~90% test accuracy)."""
    keras.utils.set_random_seed(0)
    splits = load_splits("digits", seed=0)
    model = build_model("cnn", splits.input_shape, 10, preset="tiny")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(splits.train.x, splits.train.y, batch_size=64, epochs=6, verbose=0)
    return model, splits.test.x[:96], splits.test.y[:96]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zero", "blurred", "random"])
def test_ig_completeness_within_one_percent(digits_cnn, kind):
    """On this ReLU + max-pool CNN the path integrand has kinks, so the trapezoidal
    error falls as 1/steps: measured max gap over 16 test digits 1.6% (zero), 1.7%
    (blurred) at 64 steps, 0.7%, 0.8%, 0.9% (random) at 256 steps, 0.2%, 0.2%, 0.9%
    at 512 (TensorFlow)."""
    model, x, y = digits_cnn
    x, y = x[:8], y[:8]
    attributions = ev.integrated_gradients(model, x, y, baseline_kind=kind, steps=512)
    gap = ev.completeness_gap(model, x, attributions, y, baseline_kind=kind)
    assert np.all(gap < 0.01), gap
    # and a wrong quadrature would not pass: two steps are far off on some example
    coarse = ev.integrated_gradients(model, x, y, baseline_kind=kind, steps=1)
    assert ev.completeness_gap(model, x, coarse, y, baseline_kind=kind).max() > 0.01


def test_saliency_and_smoothgrad_shapes_and_signal():
    model = smooth_image_model()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    y = np.arange(4) % 3
    g = ev.gradients(model, x[:4], y[:4])
    s = ev.smoothgrad(model, x[:4], y[:4], samples=4)
    assert g.shape == s.shape == x[:4].shape
    assert np.abs(g).max() > 0 and np.abs(s).max() > 0
    assert not np.allclose(g, s)


def region_model():
    """Class 1 = evidence of a bright blob anywhere (channel 0), class 0 = darkness
    (channel 1). Grad-CAM for class 1 must light up where the blob is."""
    inputs = keras.Input((16, 16, 1))
    conv = keras.layers.Conv2D(2, 3, padding="same", name="detector")
    h = keras.layers.ReLU()(conv(inputs))
    h = keras.layers.MaxPooling2D(2)(h)  # 8x8 maps: Grad-CAM must upsample them
    h = keras.layers.GlobalAveragePooling2D()(h)
    head = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, head(h))
    kernel = np.zeros((3, 3, 1, 2), "float32")
    kernel[..., 0, 0], kernel[..., 0, 1] = 1 / 9, -1 / 9
    conv.set_weights([kernel, np.zeros(2, "float32")])
    head.set_weights([np.array([[0.0, 5.0], [5.0, 0.0]], "float32"), np.zeros(2, "float32")])
    return model


@pytest.mark.parametrize("layer", [None, pytest.param("detector", marks=pytest.mark.slow)])
def test_grad_cam_peaks_where_the_evidence_is(layer):
    model = region_model()
    assert ev.find_last_conv(model) == "detector"
    rng = np.random.default_rng(0)
    boxes = [(1, 10), (9, 2), (4, 4), (11, 11)]  # (row, col) of a 4x4 blob; not symmetric
    x = np.abs(rng.normal(size=(len(boxes), 16, 16, 1))).astype("float32") * 0.05
    for i, (r, c) in enumerate(boxes):
        x[i, r:r + 4, c:c + 4, 0] = 1.0
    cam = ev.grad_cam(model, x, np.ones(len(x), int), layer=layer)
    assert cam.shape == (len(x), 16, 16)
    for i, (r, c) in enumerate(boxes):
        pr, pc = np.unravel_index(cam[i].argmax(), cam[i].shape)
        assert r - 1 <= pr <= r + 4 and c - 1 <= pc <= c + 4, (i, (pr, pc), (r, c))
        assert cam[i].max() == pytest.approx(1.0)


def test_grad_cam_refuses_models_without_conv_and_unknown_layers():
    dense = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no convolution layer"):
        ev.find_last_conv(dense)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        ev.grad_cam(region_model(), np.zeros((1, 16, 16, 1)), layer="nope")


def test_fgsm_at_zero_changes_nothing_and_eps_moves_every_example():
    model = smooth_image_model()
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % 3
    np.testing.assert_array_equal(ev.fgsm(model, x, y, 0.0), x)
    np.testing.assert_array_equal(ev.pgd(model, x, y, 0.0), x)
    adv = ev.fgsm(model, x, y, 0.2)
    assert np.allclose(np.abs(adv - x).max(axis=(1, 2, 3)), 0.2, atol=1e-5)  # grads reached x
    loss = ev.robustness._loss_fn(model, y)
    before = keras.ops.convert_to_numpy(loss(keras.ops.convert_to_tensor(x)))
    after = keras.ops.convert_to_numpy(loss(keras.ops.convert_to_tensor(adv)))
    assert np.all(after > before)  # each example's loss went up
    p = ev.pgd(model, x, y, 0.2, steps=3)
    assert np.abs(p - x).max() <= 0.2 + 1e-5


@pytest.mark.slow
def test_accuracy_falls_monotonically_in_epsilon(digits_cnn):
    model, x, y = digits_cnn
    eps = [0.0, 0.05, 0.1, 0.2, 0.4]
    r = ev.robustness_report(model, x, y, eps, pgd_steps=3, noise_sigmas=[0.0, 0.5, 1.0])
    clean = ev.robustness.accuracy(model, x, y)
    assert clean > 0.8
    for curve in (r["fgsm"], r["pgd"]):
        assert curve[0] == pytest.approx(clean)
        assert all(b <= a for a, b in zip(curve, curve[1:], strict=False)), curve
        assert curve[-1] < clean / 2
    # PGD is the stronger attack
    assert all(p <= f for p, f in zip(r["pgd"], r["fgsm"], strict=True))
    assert r["fgsm_eps_at_half"] is not None and 0 < r["fgsm_eps_at_half"] <= 0.4
