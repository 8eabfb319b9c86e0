"""Attributions: vanilla gradients, SmoothGrad, Integrated Gradients, Grad-CAM,
permutation importance, and SHAP (optional).

Written once with `keras.ops`; the gradient with respect to the input comes
from `kdl.backend.grads.value_and_input_gradient`, so every method runs on
TensorFlow, JAX and PyTorch. The explained quantity is the model's output for
one target per example (a class's probability, or a regression output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from kdl.backend.grads import value_and_input_gradient

CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
              keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def _targets(n: int, targets) -> np.ndarray:
    t = np.zeros(n, "int64") if targets is None else np.asarray(targets, "int64").reshape(-1)
    if t.size == 1 and n != 1:
        t = np.full(n, int(t[0]), "int64")
    if len(t) != n:
        raise ValueError(f"{len(t)} targets for {n} examples")
    return t


def target_fn(model: Callable, targets: np.ndarray) -> Callable:
    """`x -> model(x)[i, targets[i]]` for a batch of `len(targets)` examples."""
    onehot = None

    def fn(x):
        nonlocal onehot
        y = model(x, training=False)
        y = ops.reshape(y, (ops.shape(y)[0], -1))
        if onehot is None:
            onehot = ops.one_hot(ops.convert_to_tensor(targets), y.shape[-1], dtype=y.dtype)
        return ops.sum(y * onehot, axis=-1)

    return fn


def _batched_grad(fn_of_targets: Callable, x: np.ndarray, targets: np.ndarray,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    values, grads = [], []
    for i in range(0, len(x), batch_size):
        v, g = value_and_input_gradient(fn_of_targets(targets[i:i + batch_size]),
                                        x[i:i + batch_size])
        values.append(v)
        grads.append(g)
    return np.concatenate(values), np.concatenate(grads)


def predicted_class(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    return out.reshape(len(x), -1).argmax(-1)


def gradients(model: keras.Model, x: np.ndarray, targets=None,
              batch_size: int = 128) -> np.ndarray:
    """Vanilla gradients (saliency): d output[target] / d input, same shape as `x`."""
    x = np.asarray(x, "float32")
    t = _targets(len(x), targets)
    return _batched_grad(lambda tt: target_fn(model, tt), x, t, batch_size)[1]


def smoothgrad(model: keras.Model, x: np.ndarray, targets=None, *, samples: int = 16,
               noise: float = 0.15, seed: int = 0, batch_size: int = 128) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies.

    Args:
        samples: noisy copies per example.
        noise: Gaussian sigma as a share of each example's value range (max - min).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    x = np.asarray(x, "float32")
    t = _targets(len(x), targets)
    rng = np.random.default_rng(seed)
    axes = tuple(range(1, x.ndim))
    span = (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)) if axes else 1.0
    total = np.zeros_like(x)
    for _ in range(samples):
        noisy = x + rng.normal(size=x.shape).astype("float32") * noise * span
        total += gradients(model, noisy, t, batch_size)
    return total / samples


def baseline(kind: str | np.ndarray, x: np.ndarray, *, seed: int = 0,
             blur_sigma: float | None = None) -> np.ndarray:
    """An Integrated Gradients baseline for each example of `x`.

    `"zero"`: all zeros (the training mean, for standardized inputs);
    `"blurred"`: each image Gaussian-blurred over its spatial axes (sigma default
    a quarter of the smaller side; images `(n, h, w, c)` only);
    `"random"`: uniform noise within each example's value range (seeded);
    an array: used as given (broadcast to `x`).
    """
    x = np.asarray(x, "float32")
    if not isinstance(kind, str):
        return np.broadcast_to(np.asarray(kind, "float32"), x.shape).copy()
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "blurred":
        if x.ndim != 4:
            raise ValueError(f"a blurred baseline needs images (n, h, w, c), got {x.shape}")
        from scipy.ndimage import gaussian_filter

        sigma = blur_sigma if blur_sigma is not None else min(x.shape[1:3]) / 4
        return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest").astype("float32")
    if kind == "random":
        axes = tuple(range(1, x.ndim))
        lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        u = np.random.default_rng(seed).uniform(size=x.shape).astype("float32")
        return lo + u * (hi - lo)
    raise ValueError(f"unknown baseline {kind!r}; use 'zero', 'blurred', 'random' or an array")


def integrated_gradients(model: keras.Model, x: np.ndarray, targets=None, *,
                         baseline_kind: str | np.ndarray = "zero", steps: int = 64,
                         seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al. 2017) along the straight path
    from the baseline to `x`, trapezoidal rule over `steps` intervals.

    Completeness: the attributions of an example sum to f(x) - f(baseline) up
    to the quadrature error (see `completeness_gap`).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = np.asarray(x, "float32")
    t = _targets(len(x), targets)
    base = baseline(baseline_kind, x, seed=seed)
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype="float32")
    weights = np.full(steps + 1, 1.0 / steps, "float32")
    weights[[0, -1]] /= 2
    shape = (1,) * (x.ndim - 1)
    total = np.zeros_like(x)
    per_batch = max(1, batch_size // (steps + 1))
    for i in range(0, len(x), per_batch):
        xb, bb, tb = x[i:i + per_batch], base[i:i + per_batch], t[i:i + per_batch]
        a = alphas.reshape(-1, 1, *shape)
        path = (bb[None] + a * (xb - bb)[None]).reshape(-1, *x.shape[1:])  # (steps+1)*m
        _, g = value_and_input_gradient(target_fn(model, np.tile(tb, steps + 1)), path)
        g = g.reshape(steps + 1, len(xb), *x.shape[1:])
        total[i:i + per_batch] = np.tensordot(weights, g, axes=1)
    return total * (x - base)


def completeness_gap(model: keras.Model, x: np.ndarray, attributions: np.ndarray,
                     targets=None, *, baseline_kind: str | np.ndarray = "zero",
                     seed: int = 0) -> np.ndarray:
    """Per example: |sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)|."""
    x = np.asarray(x, "float32")
    t = _targets(len(x), targets)
    fn = target_fn(model, t)
    fx = ops.convert_to_numpy(fn(ops.convert_to_tensor(x)))
    fb = ops.convert_to_numpy(fn(ops.convert_to_tensor(baseline(baseline_kind, x, seed=seed))))
    diff = fx - fb
    total = attributions.reshape(len(x), -1).sum(axis=1)
    return np.abs(total - diff) / np.maximum(np.abs(diff), 1e-12)


def find_last_conv(model: keras.Model) -> str:
    """The name of the model's last convolution layer (top-level layers only)."""
    for layer in reversed(model.layers):
        if isinstance(layer, CONV_TYPES):
            return layer.name
    raise ValueError(f"model {model.name!r} has no convolution layer at its top level "
                     "(Grad-CAM needs one); name a layer with `layer=`")


def _split_at(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """(features: input -> layer output, head: layer output -> model output)."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        names = ", ".join(lay.name for lay in model.layers)
        raise ValueError(f"no layer {layer_name!r} in {model.name!r}; layers: {names}") from None
    features = keras.Model(model.inputs, layer.output)
    head = keras.Model(layer.output, model.outputs[0])
    return features, head


def grad_cam(model: keras.Model, x: np.ndarray, targets=None, *, layer: str | None = None,
             batch_size: int = 128) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): ReLU of the conv feature maps weighted by the
    spatially averaged gradient of the target, resized to the input's height and width.

    Args:
        layer: the convolution layer to read; None picks the last one (`find_last_conv`).

    Returns:
        `(n, height, width)` maps scaled to [0, 1] per example (0 where all are 0).
    """
    x = np.asarray(x, "float32")
    if x.ndim != 4:
        raise ValueError(f"Grad-CAM needs images (n, h, w, c), got {x.shape}")
    t = _targets(len(x), targets)
    features, head = _split_at(model, layer or find_last_conv(model))
    maps = np.asarray(features.predict(x, batch_size=batch_size, verbose=0), "float32")
    _, grads = _batched_grad(lambda tt: target_fn(head, tt), maps, t, batch_size)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * maps).sum(axis=-1), 0.0)
    cam = ops.convert_to_numpy(ops.image.resize(cam[..., None], x.shape[1:3],
                                                interpolation="bilinear"))[..., 0]
    peak = cam.reshape(len(x), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


class _PredictEstimator:
    """Just enough of an estimator for `sklearn.inspection.permutation_importance`."""

    def __init__(self, predict_fn: Callable):
        self.predict_fn = predict_fn

    def fit(self, *_):  # pragma: no cover - never called
        return self


def permutation_importance(predict_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                           y: np.ndarray, task: str = "classification", *, repeats: int = 5,
                           seed: int = 0, feature_names: list[str] | None = None
                           ) -> list[dict[str, Any]]:
    """Drop of the score when one feature column is shuffled (scikit-learn).

    The score is accuracy (classification) or R² (regression) of `predict_fn`'s
    outputs. Returns one row per feature, most important first: `feature`,
    `importance_mean`, `importance_std` over `repeats` shuffles.
    """
    from sklearn.inspection import permutation_importance as sk_permutation
    from sklearn.metrics import accuracy_score, r2_score

    x = np.asarray(x, "float32")
    if x.ndim != 2:
        raise ValueError(f"permutation importance needs tabular x (n, features), got {x.shape}")

    def scorer(est, xx, yy):
        out = np.asarray(est.predict_fn(np.asarray(xx, "float32")))
        if task == "classification":
            return accuracy_score(yy, out.reshape(len(xx), -1).argmax(-1))
        return r2_score(yy, out.reshape(np.shape(yy)))

    r = sk_permutation(_PredictEstimator(predict_fn), x, np.asarray(y), scoring=scorer,
                       n_repeats=repeats, random_state=seed)
    names = feature_names or [f"x{i}" for i in range(x.shape[1])]
    rows = [{"feature": names[i], "importance_mean": float(r.importances_mean[i]),
             "importance_std": float(r.importances_std[i])} for i in range(x.shape[1])]
    return sorted(rows, key=lambda row: -row["importance_mean"])


def shap_values(predict_fn: Callable[[np.ndarray], np.ndarray], background: np.ndarray,
                x: np.ndarray, targets=None, *, max_evals: int | None = None,
                seed: int = 0) -> np.ndarray:
    """SHAP values of tabular inputs through `shap`'s model-agnostic permutation
    explainer over `predict_fn` (the `kdl[explain]` extra).

    Returns `(n, features)`: each example's attribution for its target output.
    Raises `MissingExtraError` when `shap` is not installed.
    """
    try:
        import shap
    except ImportError:
        raise MissingExtraError("SHAP needs the optional package `shap`: "
                                "pip install 'kdl[explain]'") from None
    x = np.asarray(x, "float32")
    t = _targets(len(x), targets)
    masker = shap.maskers.Independent(np.asarray(background, "float32"))
    explainer = shap.explainers.Permutation(lambda v: np.asarray(predict_fn(v)), masker,
                                            seed=seed)
    values = explainer(x, max_evals=max_evals or 2 * x.shape[1] + 1, silent=True).values
    if values.ndim == 3:  # (n, features, outputs)
        values = values[np.arange(len(x)), :, t]
    return np.asarray(values, "float64")
