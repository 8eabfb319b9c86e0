"""Native magnitude pruning for any Keras backend.

The model stays a plain Keras model: no wrapper layers. A `MagnitudePruner`
holds one binary mask per pruned weight; its `callback()` recomputes the
masks at the steps the schedule says (tfmot's step convention: the n-th
training batch is step n) and multiplies every pruned weight by its mask
after each optimizer step, so pruned weights stay exactly zero through
`fit`. `strip()` re-applies the masks one last time and returns the model,
which saves and reloads without any kdl object.

What is pruned: the kernels of the leaf layers that have one (`kernel`,
`depthwise_kernel`, `pointwise_kernel`, `embeddings`, `recurrent_kernel`; so
Dense, EinsumDense, ConvND, DepthwiseConv, SeparableConv, Embedding, and both
kernels of the SimpleRNN, LSTM and GRU cells, as tfmot does). Biases and
normalization parameters are never pruned: they are a small share of the
parameters, and zeroing a bias or a scale shifts every output of its unit.
`sparsity_check` says what share that leaves dense and whether the pruned
weights reached the target.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from kdl.backend import keras_private
from kdl.compress.schedules import PruningSchedule

PRUNABLE_WEIGHT_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings",
                         "recurrent_kernel")
SPARSITY_TOLERANCE = 0.01  # the pruned weights may miss the target by at most this


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in keras_private.flatten_layers(model, include_self=False, recursive=True):
        if not list(keras_private.flatten_layers(layer, include_self=False, recursive=False)):
            layers.append(layer)
    return layers


def _excluded(layer: keras.layers.Layer, variable, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, layer.name) or re.fullmatch(p, variable.path) for p in patterns)


@dataclass
class PrunedWeight:
    """One weight under pruning: its layer, variable and current mask."""

    layer: keras.layers.Layer
    variable: Any
    mask: np.ndarray

    @property
    def path(self) -> str:
        return self.variable.path


def prunable_weights(model: keras.Model, exclude: Iterable[str] = ()) -> list[tuple[Any, Any]]:
    """`(layer, variable)` for every weight that magnitude pruning would take.

    Args:
        model: a built Keras model.
        exclude: regular expressions; a layer whose name (or a variable whose
            path, e.g. `"dense/kernel"`) matches one fully is left dense.
    """
    patterns = list(exclude)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"exclude pattern {p!r} is not a valid regular expression: {e}") from e
    found = []
    for layer in _leaf_layers(model):
        for v in layer.trainable_weights:
            if v.name in PRUNABLE_WEIGHT_NAMES and not _excluded(layer, v, patterns):
                found.append((layer, v))
    return found


def _keep_top(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Mask keeping the `max(round(n * (1 - sparsity)), 1)` largest scores (tfmot's k)."""
    flat = scores.reshape(-1)
    k = max(int(np.round(np.float32(flat.size) * (np.float32(1.0) - np.float32(sparsity)))), 1)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype="float32")
    mask[order[:k]] = 1.0
    return mask.reshape(scores.shape)


def _as_2d(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1, w.shape[-1]) if w.ndim != 1 else w.reshape(1, -1)


def _block_scores(w: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Mean |w| of each `block` of the 2-D view (rows: inputs, cols: outputs)."""
    a = np.abs(_as_2d(w))
    bh, bw = block
    rows, cols = -(-a.shape[0] // bh), -(-a.shape[1] // bw)
    padded = np.zeros((rows * bh, cols * bw), "float64")
    count = np.zeros_like(padded)
    padded[: a.shape[0], : a.shape[1]] = a
    count[: a.shape[0], : a.shape[1]] = 1.0
    s = padded.reshape(rows, bh, cols, bw).sum(axis=(1, 3))
    c = count.reshape(rows, bh, cols, bw).sum(axis=(1, 3))
    return s / c


def _expand_blocks(block_mask: np.ndarray, block: tuple[int, int], shape: tuple) -> np.ndarray:
    bh, bw = block
    full = np.repeat(np.repeat(block_mask, bh, axis=0), bw, axis=1)
    two_d = _as_2d(np.empty(shape, "float32")).shape
    return full[: two_d[0], : two_d[1]].reshape(shape)


def _m_by_n_mask(w: np.ndarray, m: int, n: int) -> np.ndarray:
    """Keep the `m` largest of every `n` consecutive weights along the input axis (-2)."""
    a = np.moveaxis(np.abs(w), -2, -1)
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // n, n)
    order = np.argsort(-groups, axis=-1, kind="stable")
    ranks = np.argsort(order, axis=-1, kind="stable")
    mask = (ranks < m).astype("float32").reshape(a.shape)
    return np.moveaxis(mask, -1, -2)


class MagnitudePruner:
    """Magnitude pruning of a Keras model's kernels, kept through training.

    Args:
        model: a built Keras model (Functional, Sequential or subclassed).
        schedule: a `PruningSchedule` (`ConstantSparsity`, `PolynomialDecay`).
        scope: `"layer"`: every pruned weight reaches the scheduled sparsity;
            `"global"`: one magnitude threshold over all pruned weights.
        block_size: `(rows, cols)` blocks of the kernel's 2-D view
            `(inputs, outputs)` pruned together, by mean magnitude (e.g.
            `(1, 4)`); `(1, 1)` prunes single weights.
        m_by_n: `(m, n)` keeps the `m` largest of every `n` consecutive
            weights along the input-channel axis (`(2, 4)`: 2:4 structured
            sparsity, 50%). The schedule then only says when to prune.
        exclude: regular expressions of layer names (or variable paths) to
            leave dense, e.g. `["head"]`.

    Example:

    ```python
    pruner = MagnitudePruner(model, PolynomialDecay(0.0, 0.8, 0, 200, frequency=10))
    model.fit(x, y, epochs=5, callbacks=[pruner.callback()])
    model = pruner.strip()
    ```
    """

    def __init__(self, model: keras.Model, schedule: PruningSchedule, *, scope: str = "layer",
                 block_size: Sequence[int] = (1, 1), m_by_n: Sequence[int] | None = None,
                 exclude: Iterable[str] = ()):
        if not isinstance(schedule, PruningSchedule):
            raise TypeError(f"schedule must be a kdl PruningSchedule, got {type(schedule)}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        block_size = tuple(int(b) for b in block_size)
        if len(block_size) != 2 or min(block_size) < 1:
            raise ValueError(f"block_size must be two integers >= 1, got {block_size}")
        if m_by_n is not None:
            m_by_n = tuple(int(v) for v in m_by_n)
            if len(m_by_n) != 2 or not 0 < m_by_n[0] < m_by_n[1]:
                raise ValueError(f"m_by_n must be (m, n) with 0 < m < n, got {m_by_n}")
            if block_size != (1, 1):
                raise ValueError("use either block_size or m_by_n, not both")
        if not model.built:
            raise ValueError("build the model (call it once or give it an Input) before pruning")
        self.model = model
        self.schedule = schedule
        self.scope = scope
        self.block_size = block_size
        self.m_by_n = m_by_n
        self.exclude = list(exclude)
        found = prunable_weights(model, self.exclude)
        if not found:
            names = ", ".join(f"{la.name} ({type(la).__name__})" for la in _leaf_layers(model))
            raise ValueError(
                f"model {model.name!r} has no prunable layers: pruning takes the kernels of "
                f"Dense, Conv, DepthwiseConv, SeparableConv, EinsumDense, Embedding and "
                f"recurrent (SimpleRNN, LSTM, GRU) layers"
                f"{' not matched by exclude=' + repr(self.exclude) if self.exclude else ''}. "
                f"Its layers: {names or 'none'}."
            )
        for layer, v in found:
            if m_by_n is not None and (len(v.shape) < 2 or v.shape[-2] % m_by_n[1]):
                raise ValueError(
                    f"layer {layer.name!r}: {m_by_n[0]}:{m_by_n[1]} sparsity needs the input "
                    f"axis of {v.path} (shape {tuple(v.shape)}) to be a multiple of "
                    f"{m_by_n[1]}; exclude the layer or change its size")
        self.weights = [PrunedWeight(layer, v, np.ones(tuple(v.shape), "float32"))
                        for layer, v in found]
        self._masks = None
        self.step = 0  # optimizer steps taken under this pruner

    @classmethod
    def keep_zeros(cls, model: keras.Model, exclude: Iterable[str] = ()) -> MagnitudePruner:
        """A pruner that never prunes more but keeps today's zero weights at zero.

        Use its `callback()` when fine-tuning an already pruned model (e.g. QAT),
        so the sparsity survives the extra training.
        """
        from kdl.compress.schedules import ConstantSparsity

        pruner = cls(model, ConstantSparsity(0.0, begin_step=0, end_step=0), exclude=exclude)
        for pw in pruner.weights:
            pw.mask = (ops.convert_to_numpy(pw.variable) != 0).astype("float32")
        return pruner

    # -- masks -------------------------------------------------------------
    def _scores(self, w: np.ndarray) -> np.ndarray:
        return np.abs(w) if self.block_size == (1, 1) else _block_scores(w, self.block_size)

    def _from_scores(self, mask: np.ndarray, w: np.ndarray) -> np.ndarray:
        if self.block_size == (1, 1):
            return mask
        return _expand_blocks(mask, self.block_size, w.shape)

    def update_masks(self, sparsity: float) -> None:
        """Recompute every mask from the current weights for `sparsity`."""
        values = [ops.convert_to_numpy(pw.variable).astype("float32") for pw in self.weights]
        if self.m_by_n is not None:
            masks = [_m_by_n_mask(w, *self.m_by_n) for w in values]
        elif self.scope == "layer":
            masks = [self._from_scores(_keep_top(self._scores(w), sparsity), w) for w in values]
        else:
            scores = [self._scores(w) for w in values]
            flat = _keep_top(np.concatenate([s.reshape(-1) for s in scores]), sparsity)
            masks, start = [], 0
            for s, w in zip(scores, values, strict=True):
                masks.append(self._from_scores(flat[start:start + s.size].reshape(s.shape), w))
                start += s.size
        for pw, m in zip(self.weights, masks, strict=True):
            pw.mask = m.astype("float32")
        self._masks = None

    def apply_masks(self) -> None:
        """Multiply every pruned weight by its mask (pruned weights become 0)."""
        if self._masks is None:
            self._masks = [ops.convert_to_tensor(pw.mask, dtype=pw.variable.dtype)
                           for pw in self.weights]
        for pw, m in zip(self.weights, self._masks, strict=True):
            pw.variable.assign(ops.multiply(pw.variable, m))

    def on_step_begin(self) -> bool:
        """Prune if the schedule says so for the coming step; True if it did."""
        should, sparsity = self.schedule(self.step + 1)
        if should:
            self.update_masks(sparsity)
            self.apply_masks()
        return should

    def on_step_end(self) -> None:
        self.step += 1
        self.apply_masks()

    def callback(self) -> PruningCallback:
        """The Keras callback that keeps this pruner's masks through `fit`."""
        return PruningCallback(self)

    def strip(self) -> keras.Model:
        """Apply the masks a last time and return the (plain Keras) model.

        The returned model has no pruning state; saving it writes a `.keras`
        file that loads without kdl.
        """
        self.apply_masks()
        return self.model

    def report(self) -> dict[str, float]:
        """Sparsity (fraction of exact zeros) of each pruned weight, by variable path."""
        return {pw.path: float(np.mean(ops.convert_to_numpy(pw.variable) == 0))
                for pw in self.weights}


class PruningCallback(keras.callbacks.Callback):
    """Recompute masks on the schedule and re-apply them after every optimizer step.

    Args:
        pruner: the `MagnitudePruner` whose masks are kept.

    With `steps_per_execution > 1` the masks are applied once per execution.
    """

    def __init__(self, pruner: MagnitudePruner):
        super().__init__()
        self.pruner = pruner

    def on_train_batch_begin(self, batch, logs=None):
        if self.pruner.schedule.should_prune(self.pruner.step + 1):
            _ = self.model  # on JAX, brings the training state back into the variables
            self.pruner.on_step_begin()

    def on_train_batch_end(self, batch, logs=None):
        _ = self.model
        self.pruner.on_step_end()

    def on_train_end(self, logs=None):
        _ = self.model
        self.pruner.apply_masks()


def recalibrate_batch_norm(model: keras.Model, x, batch_size: int = 256) -> int:
    """Re-estimate every BatchNormalization's moving statistics on `x` (an array, or an
    iterable of input batches such as a `tf.data` dataset of streamed images).

    Pruning (and QAT) change the activations feeding batch norm faster than its
    moving averages follow in a short fine-tune; stale statistics then cost
    accuracy at inference. This runs `x` through the model in training mode,
    with no weight update, and sets each moving mean/variance to the average
    of the per-batch statistics. Returns the number of layers recalibrated.
    """
    bns = [la for la in keras_private.flatten_layers(model)
           if isinstance(la, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    saved = [bn.momentum for bn in bns]
    try:
        batches = ((x[s:s + batch_size] for s in range(0, len(x), batch_size))
                   if hasattr(x, "shape") else x)
        for i, batch in enumerate(batches):
            for bn in bns:
                bn.momentum = i / (i + 1)  # running average of the batch statistics
            model(ops.convert_to_tensor(batch), training=True)
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m
    return len(bns)


def sparsity_report(model: keras.Model, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Parameter counts and the sparsity of each prunable weight of `model`.

    Returns:
        `{"params", "nonzero_params", "sparsity", "layers": {path: sparsity}}`
        where `sparsity` is the fraction of zeros over all parameters.
    """
    params = nonzero = 0
    for v in model.weights:
        a = ops.convert_to_numpy(v)
        params += a.size
        nonzero += int(np.count_nonzero(a))
    layers = {v.path: float(np.mean(ops.convert_to_numpy(v) == 0))
              for _, v in prunable_weights(model, exclude)}
    return {"params": int(params), "nonzero_params": int(nonzero),
            "sparsity": 1.0 - nonzero / max(params, 1), "layers": layers}


def sparsity_check(model: keras.Model, target: float, exclude: Iterable[str] = (),
                   tolerance: float = SPARSITY_TOLERANCE) -> dict[str, Any]:
    """Did pruning reach `target`? Over the weights it prunes, and what stays dense.

    Returns:
        `pruned_sparsity` (zeros over the prunable weights, the figure the
        target is about), `overall_sparsity` (zeros over every parameter),
        `dense_params` by reason (`bias and normalization`, `excluded`), `met`
        (pruned sparsity within `tolerance` of the target; False on NaN) and
        `message`, one sentence for a report or an error.
    """
    from kdl.gates import at_most

    all_prunable = {id(v) for _, v in prunable_weights(model)}
    pruned = prunable_weights(model, exclude)
    pruned_ids = {id(v) for _, v in pruned}
    zeros = sum(int(np.size(a) - np.count_nonzero(a))
                for a in (ops.convert_to_numpy(v) for _, v in pruned))
    size = sum(int(np.prod(v.shape)) for _, v in pruned)
    dense = {"bias and normalization": 0, "excluded": 0}
    params = nonzero = 0
    for v in model.weights:
        a = ops.convert_to_numpy(v)
        params += a.size
        nonzero += int(np.count_nonzero(a))
        if id(v) not in pruned_ids:
            dense["excluded" if id(v) in all_prunable else "bias and normalization"] += a.size
    achieved = zeros / size if size else float("nan")
    met = at_most(abs(achieved - target), tolerance)
    message = (f"pruned weights reached {achieved:.3f} sparsity (target {target:.3f}, "
               f"tolerance {tolerance}); overall {1 - nonzero / max(params, 1):.3f} over "
               f"{params} parameters, of which {dense['bias and normalization']} bias/"
               f"normalization and {dense['excluded']} excluded stay dense")
    return {"pruned_params": size, "pruned_sparsity": achieved,
            "overall_sparsity": 1.0 - nonzero / max(params, 1), "target": target,
            "dense_params": dense, "met": met, "message": message}


def prune_magnitude(model: keras.Model, schedule: PruningSchedule, **kwargs: Any
                    ) -> MagnitudePruner:
    """Shorthand for `MagnitudePruner(model, schedule, **kwargs)`."""
    return MagnitudePruner(model, schedule, **kwargs)
