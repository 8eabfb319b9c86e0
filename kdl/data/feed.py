"""Training batches from in-memory arrays, fed without threads on PyTorch.

`kdl.data.make_tf_dataset` serves every backend, but on JAX and PyTorch Keras pulls each
`tf.data` batch across a thread hand-off and converts it to NumPy: 1-17 ms per batch on
this 2-core machine under load, against 0.03-1.2 ms for slicing the arrays (measured in
docs/performance.md). `ArrayBatches` slices the arrays in the training thread, in an order
of its own seeded generator, reshuffled after every epoch: seeded runs repeat exactly and do
not depend on NumPy's global state. TensorFlow keeps `tf.data`, which runs inside its graph.
JAX keeps it too: a distributed JAX run needs `tf.data`'s sharding across processes, and a
one-device run must see the same batches as a distributed one, so that adding
`train.distribution` gives the same weights (`tests/pipelines/test_launch.py`).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from kdl.data.core import Split, is_multi_input


class ArrayBatches(keras.utils.PyDataset):
    """`(x, y)` (or `(x, y, weight)`) batches of an in-memory split, shuffled per epoch."""

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 targets: bool = True, drop_remainder: bool = False):
        super().__init__()  # workers=1, no multiprocessing: Keras calls __getitem__ in line
        self._x = tuple(split.x) if is_multi_input(split.x) else split.x
        self._y = split.y if targets else None
        self._w = (split.weight.astype("float32")
                   if targets and split.weight is not None else None)
        self._batch = int(batch_size)
        self._shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        n = len(split.y)
        self._order = self._rng.permutation(n) if shuffle else np.arange(n)
        self._len = n // self._batch if drop_remainder else math.ceil(n / self._batch)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        if not 0 <= i < self._len:
            raise IndexError(f"batch {i} of {self._len}")
        idx = self._order[i * self._batch:(i + 1) * self._batch]
        x = tuple(a[idx] for a in self._x) if isinstance(self._x, tuple) else self._x[idx]
        if self._y is None:
            return (x,)
        return (x, self._y[idx]) if self._w is None else (x, self._y[idx], self._w[idx])

    def on_epoch_end(self) -> None:
        if self._shuffle:
            self._rng.shuffle(self._order)
