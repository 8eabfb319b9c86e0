"""Compile a function of tensors the way each backend's train step is compiled."""

import keras


def jit(fn):
    """`jax.jit` on JAX, `tf.function` (graph, no autograph) on TensorFlow, `fn` on PyTorch.

    Used to check that library code (schedules, metrics) is trace-safe: a
    Python `if` on a tensor fails under JAX tracing and in a TF graph built
    without autograph. PyTorch's eager train step runs `fn` as is.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    return fn
