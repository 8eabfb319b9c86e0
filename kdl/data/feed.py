"""Training batches from in-memory arrays, fed without threads on JAX and PyTorch.

`kdl.data.make_tf_dataset` serves every backend, but on JAX and PyTorch Keras pulls each
`tf.data` batch across a thread hand-off and converts it to NumPy: 1-17 ms per batch on
this 2-core machine under load, against 0.03-1.2 ms for slicing the arrays (measured in
docs/performance.md). `ArrayBatches` slices the arrays in the training thread, in an order
of its own seeded generator, reshuffled after every epoch: seeded runs repeat exactly and do
not depend on NumPy's global state. TensorFlow keeps `tf.data`, which runs inside its graph.

A distributed JAX run feeds the same batches: one process feeds the global batch, which
Keras splits over the devices; with several processes each feeds its `shard` of it, the
slice Keras would have cut from a `tf.data` input. So adding `train.distribution` gives
the one-device weights (`tests/pipelines/test_launch.py`).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from kdl.data.core import Split, is_multi_input


def shard_slice(batch_size: int, shard: tuple[int, int], drop_remainder: bool) -> slice:
    """The rows of a global batch that process `index` of `count` feeds (`shard`): the
    `index`-th of `count` equal, contiguous slices, as Keras shards a `tf.data` input
    (`rebatch(batch_size / count)`, then `shard(count, index)`). Every batch must split
    evenly: `count` divides `batch_size`, and the smaller last batch is dropped."""
    index, count = shard
    if count > 1 and (batch_size % count or not drop_remainder):
        raise ValueError(f"a batch of {batch_size} sharded over {count} processes needs "
                         f"a batch size that {count} divides and drop_remainder=True")
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    part = batch_size // count
    return slice(index * part, (index + 1) * part)


class ArrayBatches(keras.utils.PyDataset):
    """`(x, y)` (or `(x, y, weight)`) batches of an in-memory split, shuffled per epoch.

    `shard=(index, count)`: this process's part of every global batch when `count`
    processes train one run (`shard_slice`).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 targets: bool = True, drop_remainder: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__()  # workers=1, no multiprocessing: Keras calls __getitem__ in line
        self._slice = shard_slice(batch_size, shard, drop_remainder)
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
        idx = self._order[i * self._batch:(i + 1) * self._batch][self._slice]
        x = tuple(a[idx] for a in self._x) if isinstance(self._x, tuple) else self._x[idx]
        if self._y is None:
            return (x,)
        return (x, self._y[idx]) if self._w is None else (x, self._y[idx], self._w[idx])

    def on_epoch_end(self) -> None:
        if self._shuffle:
            self._rng.shuffle(self._order)
