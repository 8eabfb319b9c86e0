"""Augmentation: Keras core preprocessing layers by name, in the input pipeline.

`data.augment` is an ordered list `[{"name": "RandomFlip", "mode": "horizontal"},
{"name": "RandomRotation", "factor": 0.1}, ...]`. `build_augment` makes the
layers (each seeded from the data seed unless given one) and returns a
function `(x, y) -> (x, y)` on batches that the training split's `tf.data`
pipeline maps, so it runs on every backend and is never part of the model
(nothing to export). `CutMix` and `MixUp` mix labels too: the training labels
become one-hot (soft) and the loss categorical (`Augment.soft_labels`).

Image datasets (`kdl.data.images`) augment pixels in [0, 255], before
normalization (Keras's default `value_range`); in-memory arrays are augmented
after their normalization, so give colour layers a `value_range` there.
keras-cv is not used: its layers moved into Keras core.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from kdl.data.core import DataError

LAYERS = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
          "RandomBrightness", "RandomColorJitter", "RandomColorDegeneration", "RandomHue",
          "RandomSaturation", "RandomSharpness", "RandomShear", "RandomGrayscale",
          "RandomInvert", "RandomPosterization", "RandomPerspective", "RandomGaussianBlur",
          "RandomElasticTransform", "RandomErasing", "RandAugment", "AugMix", "Solarization",
          "Equalization", "CutMix", "MixUp")
MIXING = ("CutMix", "MixUp")  # they mix labels: one-hot labels, categorical loss


def _close(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _arguments(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "kwargs", "data_format")]


def check_augment(specs: list[dict[str, Any]], key: str = "data.augment") -> None:
    """Names and arguments of `specs` exist and the layers build; else `DataError`."""
    import keras

    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise DataError(f"{where}: expected a mapping with 'name' (a Keras preprocessing "
                            f"layer, e.g. RandomFlip) and its arguments, got {spec!r}")
        name = spec["name"]
        if name not in LAYERS:
            raise DataError(f"{where}: unknown augmentation layer {name!r}.{_close(name, LAYERS)}"
                            f" Available: {', '.join(LAYERS)}.")
        cls = getattr(keras.layers, name)
        allowed = _arguments(cls)
        for arg in spec:
            if arg != "name" and arg not in allowed:
                raise DataError(f"{where}: {name} has no argument {arg!r}."
                                f"{_close(arg, allowed)} Arguments: {', '.join(allowed)}.")
        try:
            cls(**{k: v for k, v in spec.items() if k != "name"})
        except (TypeError, ValueError) as e:
            args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "name")
            raise DataError(f"{where}: {name}({args}): "
                            f"{str(e).strip().splitlines()[0]}") from None


class Augment:
    """The training split's augmentation: `(x, y) -> (x, y)` on a batch, in tf.data.

    Args:
        specs: `[{"name": <layer>, **arguments}, ...]`, applied in order.
        num_classes: for the one-hot labels of `CutMix`/`MixUp`.
        seed: layer `i` gets `seed + i` unless its spec sets one.
    """

    def __init__(self, specs: list[dict[str, Any]], num_classes: int, seed: int = 0):
        import keras

        check_augment(specs)
        self.specs = [dict(s) for s in specs]
        self.num_classes = num_classes
        self.layers = []
        for i, spec in enumerate(specs):
            cls = getattr(keras.layers, spec["name"])
            args = {k: v for k, v in spec.items() if k != "name"}
            if "seed" in _arguments(cls):
                args.setdefault("seed", seed + i)
            self.layers.append(cls(**args))
        self.soft_labels = any(s["name"] in MIXING for s in specs)

    def __call__(self, x, y):
        import tensorflow as tf

        if self.soft_labels:
            y = tf.one_hot(tf.cast(y, "int32"), self.num_classes)
        for spec, layer in zip(self.specs, self.layers, strict=True):
            if spec["name"] in MIXING:
                out = layer({"images": x, "labels": y}, training=True)
                x, y = out["images"], out["labels"]
            else:
                x = layer(x, training=True)
        return tf.cast(x, "float32"), y


def build_augment(specs: list[dict[str, Any]], num_classes: int, seed: int = 0
                  ) -> Augment | None:
    """An `Augment` for `specs`, or None when the list is empty."""
    return Augment(specs, num_classes, seed) if specs else None



def one_hot_targets(ds, num_classes: int):
    """A `(x, y)` dataset with class ids `y` as one-hot rows (for the soft-label loss)."""
    import tensorflow as tf

    return ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, "int32"), num_classes)))
