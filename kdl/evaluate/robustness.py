"""Adversarial and noise robustness of a classifier: FGSM, PGD, Gaussian noise.

The attacks differentiate the cross-entropy of the true class with respect to
the input (`kdl.backend.grads.value_and_input_gradient`), so they run on
TensorFlow, JAX and PyTorch. Epsilon is in the model's input units (for kdl's
standardized inputs: standard deviations of each feature), under the L-inf norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from kdl.backend.grads import value_and_input_gradient


def _loss_fn(model: keras.Model, y: np.ndarray):
    """Per-example cross-entropy of the true class, from the model's probabilities."""
    labels = ops.convert_to_tensor(np.asarray(y, "int32").reshape(-1))

    def fn(x):
        p = model(x, training=False)
        onehot = ops.one_hot(labels, p.shape[-1], dtype=p.dtype)
        return -ops.log(ops.clip(ops.sum(p * onehot, axis=-1), 1e-7, 1.0))

    return fn


def loss_gradient(model: keras.Model, x: np.ndarray, y: np.ndarray,
                  batch_size: int = 256) -> np.ndarray:
    """d cross-entropy(true class) / d x, per example."""
    x = np.asarray(x, "float32")
    y = np.asarray(y).reshape(-1)
    return np.concatenate([value_and_input_gradient(_loss_fn(model, y[i:i + batch_size]),
                                                    x[i:i + batch_size])[1]
                           for i in range(0, len(x), batch_size)])


def _clip(x: np.ndarray, clip: tuple[Any, Any] | None) -> np.ndarray:
    return x if clip is None else np.clip(x, clip[0], clip[1])


def fgsm(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float, *,
         clip: tuple[Any, Any] | None = None) -> np.ndarray:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): x + eps * sign(grad).

    `clip`: (low, high) bounds of valid inputs (scalars or arrays), or None.
    """
    x = np.asarray(x, "float32")
    if eps == 0:
        return x.copy()
    return _clip(x + eps * np.sign(loss_gradient(model, x, y)), clip).astype("float32")


def pgd(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float, *, steps: int = 5,
        step_size: float | None = None, random_start: bool = True, seed: int = 0,
        clip: tuple[Any, Any] | None = None) -> np.ndarray:
    """Projected gradient descent (Madry et al. 2018) in the L-inf ball of radius eps:
    `steps` signed-gradient steps of `step_size` (default 2.5 * eps / steps), each
    projected back into the ball, from a random start inside it."""
    x = np.asarray(x, "float32")
    if eps == 0:
        return x.copy()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    adv = x.copy()
    if random_start:
        adv += np.random.default_rng(seed).uniform(-eps, eps, x.shape).astype("float32")
    for _ in range(steps):
        adv = adv + step_size * np.sign(loss_gradient(model, _clip(adv, clip), y))
        adv = _clip(np.clip(adv, x - eps, x + eps), clip)
    return adv.astype("float32")


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(model.predict(x, batch_size=256, verbose=0))
    return float(np.mean(p.reshape(len(x), -1).argmax(-1) == np.asarray(y).reshape(-1)))


def accuracy_vs_epsilon(model: keras.Model, x: np.ndarray, y: np.ndarray,
                        epsilons: Sequence[float], attack: str = "fgsm", **kwargs
                        ) -> list[float]:
    """Accuracy on `attack(x, eps)` ("fgsm", "pgd" or "noise": Gaussian sigma = eps)."""
    out = []
    for eps in epsilons:
        if attack == "fgsm":
            adv = fgsm(model, x, y, eps, **kwargs)
        elif attack == "pgd":
            adv = pgd(model, x, y, eps, **kwargs)
        elif attack == "noise":
            rng = np.random.default_rng(kwargs.get("seed", 0))
            adv = x + eps * rng.normal(size=np.shape(x)).astype("float32")
        else:
            raise ValueError(f"unknown attack {attack!r}; use 'fgsm', 'pgd' or 'noise'")
        out.append(accuracy(model, adv, y))
    return out


def epsilon_at_half(epsilons: Sequence[float], accuracies: Sequence[float]) -> float | None:
    """The smallest eps at which accuracy falls to half its eps=0 value (linear
    interpolation between the measured points), or None if it never does
    (or the clean accuracy is 0).

    `epsilons` must be increasing and start at 0."""
    eps, acc = np.asarray(epsilons, "float64"), np.asarray(accuracies, "float64")
    if len(eps) < 2 or eps[0] != 0 or np.any(np.diff(eps) <= 0):
        raise ValueError(f"epsilons must be increasing and start at 0, got {list(epsilons)}")
    if not np.isfinite(acc).all():
        raise ValueError("accuracies contain NaN or inf")
    if acc[0] <= 0:
        return None  # nothing to halve
    half = acc[0] / 2
    for i in range(1, len(eps)):
        if acc[i] <= half:
            a0, a1 = acc[i - 1], acc[i]
            frac = 1.0 if a0 == a1 else (a0 - half) / (a0 - a1)
            return float(eps[i - 1] + frac * (eps[i] - eps[i - 1]))
    return None


def robustness_report(model: keras.Model, x: np.ndarray, y: np.ndarray,
                      epsilons: Sequence[float], *, pgd_steps: int = 5,
                      noise_sigmas: Sequence[float] | None = None, seed: int = 0,
                      clip: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Accuracy vs eps for FGSM and PGD and vs sigma for Gaussian noise, and the
    eps at which each halves the clean accuracy."""
    eps = [float(e) for e in epsilons]
    sigmas = [float(s) for s in (noise_sigmas if noise_sigmas is not None else eps)]
    fg = accuracy_vs_epsilon(model, x, y, eps, "fgsm", clip=clip)
    pg = accuracy_vs_epsilon(model, x, y, eps, "pgd", steps=pgd_steps, seed=seed, clip=clip)
    nz = accuracy_vs_epsilon(model, x, y, sigmas, "noise", seed=seed)
    return {"examples": int(len(x)), "epsilons": eps, "fgsm": fg, "pgd": pg,
            "pgd_steps": pgd_steps, "noise_sigmas": sigmas, "noise": nz,
            "fgsm_eps_at_half": epsilon_at_half(eps, fg),
            "pgd_eps_at_half": epsilon_at_half(eps, pg),
            "noise_sigma_at_half": epsilon_at_half(sigmas, nz)}
