"""The only place in kdl with per-backend code: devices, precision, gradients, RNG, jit,
and custom train steps.

`CustomTrainModel` (see `kdl.backend.training`) lets models trained by their own
losses (GAN, VAE, SimCLR, CLIP, DDPM, DQN) use `fit` on every backend.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import keras


def backend() -> str:
    return keras.backend.backend()


@functools.cache
def accelerator() -> str | None:
    """"gpu", "tpu" or None (CPU only), as the current backend sees it."""
    name = backend()
    if name == "jax":
        import jax

        platform = jax.devices()[0].platform
        return None if platform == "cpu" else platform
    if name == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else None
    if name == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "gpu"
        return "tpu" if tf.config.list_physical_devices("TPU") else None
    return None


def _gpu_supports_bf16() -> bool:
    name = backend()
    try:
        if name == "torch":
            import torch

            return torch.cuda.is_bf16_supported()
        if name == "tensorflow":
            import tensorflow as tf

            gpu = tf.config.list_physical_devices("GPU")[0]
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
            return tuple(cc) >= (8, 0)
        if name == "jax":
            import jax

            cc = getattr(jax.devices()[0], "compute_capability", "0.0")
            return tuple(int(p) for p in str(cc).split(".")) >= (8, 0)
    except (ImportError, IndexError, ValueError, AttributeError):
        return False
    return False


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(policy: str) -> str:
    """Map "auto" to a concrete Keras dtype policy for this machine.

    mixed_bfloat16 on TPUs and bf16-capable GPUs, mixed_float16 on older GPUs,
    float32 on CPUs. A CPU with native bf16 (see `cpu_has_native_bf16`) still
    gets float32: Keras's CPU kernels gain little from bf16 on small models and
    the exported fp32 TFLite would no longer match the Keras model to 1e-4. Ask
    for "mixed_bfloat16" explicitly to train that way on such a CPU.
    Any other value passes through.
    """
    if policy != "auto":
        return policy
    device = accelerator()
    if device == "tpu":
        return "mixed_bfloat16"
    if device == "gpu":
        return "mixed_bfloat16" if _gpu_supports_bf16() else "mixed_float16"
    return "float32"


def torch_threads(requested: int | None = None) -> int:
    """Set PyTorch's CPU intra-op threads: `requested`, or by default half the cores this
    process may run on (at least 1). Returns the number set.

    Why half: a training process shares its cores with its own `tf.data` input
    threads, and often with other processes; PyTorch's default (every core)
    then oversubscribes them and its spinning worker threads slow each step
    several-fold (docs/performance.md has the figures).
    """
    import torch

    n = requested
    if n is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        n = max(1, cores // 2)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def enable_determinism() -> None:
    """Ask the backend for run-to-run reproducible ops (with the seed `prepare` sets).

    TensorFlow: `tf.config.experimental.enable_op_determinism()` (deterministic
    kernels and tf.data order; an op without a deterministic kernel raises
    instead of varying). PyTorch: `torch.use_deterministic_algorithms(True,
    warn_only=True)` (warns where an op has none) and cuDNN's benchmark off.
    JAX: XLA's CPU ops are deterministic; on GPU `--xla_gpu_deterministic_ops`
    must be in `XLA_FLAGS` before JAX starts, so it is set here only if JAX has
    not started a backend yet. The cost on CPU is measured in
    docs/training.md (Reproducibility).
    """
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif name == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif name == "jax":
        import os

        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


from kdl.backend.training import CustomTrainModel, OptimizerGroup  # noqa: E402, F401
