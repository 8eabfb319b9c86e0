"""Compression: pruning, quantization-aware training, post-training quantization, distillation.

- `MagnitudePruner` (engine "native", every backend) with the schedules
  `ConstantSparsity` and `PolynomialDecay` (tfmot's semantics).
- `kdl.compress.tfmot_engine`: tensorflow-model-optimization's pruning and
  QAT, run in a separate `TF_USE_LEGACY_KERAS=1` process.
"""

from kdl.compress.pruning import (
    MagnitudePruner,
    PruningCallback,
    prunable_weights,
    prune_magnitude,
    recalibrate_batch_norm,
    sparsity_report,
)
from kdl.compress.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule, make_schedule

__all__ = [
    "ConstantSparsity",
    "MagnitudePruner",
    "PolynomialDecay",
    "PruningCallback",
    "PruningSchedule",
    "make_schedule",
    "prunable_weights",
    "prune_magnitude",
    "recalibrate_batch_norm",
    "sparsity_report",
]
