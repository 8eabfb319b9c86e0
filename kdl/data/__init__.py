"""Datasets by name, seeded splits, train-only normalization, tf.data input.

A dataset entry in `DATASETS` is a function returning `RawData` (all the
examples, unsplit). `load_splits` turns it into seeded train/val/test splits
and computes normalization statistics on the training split only.
"""

from kdl.data import (
    sources,  # noqa: F401  (registers the built-in datasets)
    synthetic,  # noqa: F401  (generated sequence and graph datasets)
    text,  # noqa: F401  (text files, keras.datasets imdb/reuters, generated reviews)
)
from kdl.data.core import (
    DataError,
    DataSplits,
    Normalizer,
    RawData,
    Split,
    fingerprint,
    is_text,
    load_splits,
    make_tf_dataset,
    model_input,
    num_examples,
    sample,
    take,
)

__all__ = [
    "DataError",
    "DataSplits",
    "Normalizer",
    "RawData",
    "Split",
    "fingerprint",
    "is_text",
    "load_splits",
    "make_tf_dataset",
    "model_input",
    "num_examples",
    "sample",
    "take",
]
