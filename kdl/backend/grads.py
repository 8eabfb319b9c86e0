"""Gradients of a loss with respect to a model's trainable variables, per backend.

`model.fit` does not hand its gradients to callbacks, so tools that inspect
gradients (the gradient-statistics callback, the NaN guard's diagnosis)
compute them on a probe batch here. The model runs with `training=False`:
no dropout draw and no BatchNormalization update, so probing never changes
the model or the random state of the run.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


def resolve_loss(model: keras.Model, loss: Callable | str | None = None) -> Callable:
    """`loss`, or the model's compiled loss, as a `fn(y_true, y_pred) -> scalar` (batch mean)."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("no loss to differentiate: compile the model or pass `loss=`")
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError("gradient probing supports a single-output loss; pass `loss=` "
                         "as one function of (y_true, y_pred)")
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    return lambda y_true, y_pred: keras.ops.mean(fn(y_true, y_pred))


def compute_gradients(model: keras.Model, x, y, loss: Callable | str | None = None
                      ) -> tuple[float, list[tuple[str, np.ndarray]]]:
    """The loss on `(x, y)` and its gradient for each trainable variable.

    Args:
        model: a built Keras model.
        x, y: one batch (NumPy arrays or tensors).
        loss: `fn(y_true, y_pred)`, a loss name, or None for the compiled loss.

    Returns:
        `(loss_value, [(variable.path, gradient as a NumPy array), ...])`, in
        the order of `model.trainable_variables`. A variable the loss does not
        depend on gets a zero gradient.
    """
    loss_fn = resolve_loss(model, loss)
    variables = list(model.trainable_variables)
    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        value, grads = _tf_gradients(model, variables, x, y, loss_fn)
    elif backend == "jax":
        value, grads = _jax_gradients(model, variables, x, y, loss_fn)
    elif backend == "torch":
        value, grads = _torch_gradients(model, variables, x, y, loss_fn)
    else:  # pragma: no cover
        raise NotImplementedError(f"gradients are not implemented for backend {backend!r}")
    out = []
    for v, g in zip(variables, grads, strict=True):
        g = np.zeros(tuple(v.shape), "float32") if g is None else np.asarray(g, "float32")
        out.append((v.path, g))
    return float(value), out


def _tf_gradients(model, variables, x, y, loss_fn):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = loss_fn(y, model(x, training=False))
    grads = tape.gradient(value, [v.value for v in variables])
    return value.numpy(), [None if g is None else tf.convert_to_tensor(g).numpy()
                           for g in grads]


def _jax_gradients(model, variables, x, y, loss_fn):
    import jax

    trainable = [v.value for v in variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_of(params):
        y_pred, _ = model.stateless_call(params, non_trainable, x, training=False)
        return loss_fn(y, y_pred)

    value, grads = jax.value_and_grad(loss_of)(trainable)
    return np.asarray(value), [np.asarray(g) for g in grads]


def _torch_gradients(model, variables, x, y, loss_fn):
    import torch

    params = [v.value for v in variables]
    value = loss_fn(y, model(x, training=False))
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return value.detach().cpu().numpy(), [
        None if g is None else g.detach().cpu().numpy() for g in grads]


def value_and_input_gradient(fn: Callable, x) -> tuple[np.ndarray, np.ndarray]:
    """`fn(x)` and the gradient of `sum(fn(x))` with respect to the input `x`.

    The input-side twin of `compute_gradients`: explanations (saliency,
    Integrated Gradients, Grad-CAM) and adversarial examples (FGSM, PGD) need
    d output / d input. `fn` is written with `keras.ops` (a model call with
    `training=False`, a loss of it, a head over features); each example's
    value depends on its own row only, so the gradient of the sum is each
    row's own gradient.

    Args:
        fn: `tensor (n, ...) -> tensor (n,)` (any shape; it is summed).
        x: a NumPy array or tensor, float.

    Returns:
        `(fn(x) as a NumPy array, gradient as a float32 NumPy array of x's shape)`.
    """
    x = keras.ops.convert_to_tensor(np.asarray(x, "float32"))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = tf.reduce_sum(value)
        grad = tape.gradient(total, x)
        value, grad = value.numpy(), (tf.zeros_like(x) if grad is None else grad).numpy()
    elif backend == "jax":
        import jax

        def total(inp):
            v = fn(inp)
            return jax.numpy.sum(v), v

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(x)
        value, grad = np.asarray(value), np.asarray(grad)
    elif backend == "torch":
        import torch

        x = x.detach().clone().requires_grad_(True)
        value = fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        value, grad = value.detach().cpu().numpy(), grad.detach().cpu().numpy()
    else:  # pragma: no cover
        raise NotImplementedError(f"gradients are not implemented for backend {backend!r}")
    return np.asarray(value, "float32"), np.asarray(grad, "float32")
