"""One registry class for everything kdl builds by name.

Models, datasets, schedules and callbacks are each a `Registry`. An entry is a
callable plus its metadata: for models and datasets a typed spec (`ModelSpec`,
`DatasetSpec`, in the spirit of timm's pretrained configs: a misspelt field fails
at registration), for the others a free-form dict. Unknown names raise
`UnknownNameError`, which lists close matches and every available name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any


class UnknownNameError(KeyError):
    """A name that is not in a registry. The message lists close matches."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        self.message = f"unknown {kind} {name!r}.{hint} Available: {', '.join(available)}."
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model says about itself.

    Attributes:
        presets: name -> keyword arguments (`tiny` runs a forward pass in well under a second).
        tasks: the tasks it builds a head for ("classification", "regression", ...).
        harness: `kdl.testing` overrides for its test case (input shapes, example data, ...).
        data_arg: trained by its own losses (GAN, VAE, ...): the keyword its data shape is
            passed under; None: an ordinary `(input_shape, num_outputs)` model.
        raw_pixels: takes unnormalized pixels (its own preprocessing layer).
        decode: `decode(model, source, start_id, steps)`, greedy decoding of a seq2seq model.
    """

    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    harness: dict[str, Any] = field(default_factory=dict)
    data_arg: str | None = None
    raw_pixels: bool = False
    decode: Callable[..., Any] | None = None

    @property
    def custom_training(self) -> bool:
        """Trained by its own losses (`data_arg`), not compiled with a task loss."""
        return self.data_arg is not None


@dataclass(frozen=True)
class DatasetSpec:
    """What a registered dataset says about itself.

    Attributes:
        task: the task of its targets, when fixed ("classification", ...).
        input: "text" for raw strings (tokenized by the pipeline); None: arrays.
        columns: side columns it carries (group labels for fairness, ...).
        inputs: arrays per example (several for multi-input models).
        files: image files decoded on the fly (not arrays in memory).
        check: the user's file, read when the config is validated (bad rows fail first).
    """

    task: str | None = None
    input: str | None = None
    columns: tuple[str, ...] = ()
    inputs: int = 1
    files: bool = False
    check: bool = False


@dataclass
class Entry:
    """A registered object, its metadata as given, and its typed spec (registries with one)."""

    name: str
    obj: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)
    spec: Any = None

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        return self.meta.get("presets", {})

    @property
    def doc(self) -> str:
        return (self.obj.__doc__ or "").strip().splitlines()[0] if self.obj.__doc__ else ""


class Registry:
    """A name -> entry table for one kind of thing.

    Args:
        kind: what the entries are, used in error messages ("model", "dataset").
        spec: the dataclass an entry's metadata must fit (`ModelSpec`, ...); None:
            free-form metadata.

    Example:

    ```python
    MODELS = Registry("model")

    @MODELS.register("mlp", presets={"tiny": {"units": (8,)}}, tasks=("classification",))
    def mlp(input_shape, num_outputs, units=(64,)):
        ...

    model = MODELS.build("mlp", preset="tiny", input_shape=(4,), num_outputs=3)
    ```
    """

    def __init__(self, kind: str, spec: type | None = None):
        self.kind = kind
        self.spec = spec
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator: register `obj` under `name` (default: its `__name__`)."""

        def decorator(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            spec = None
            if self.spec is not None:
                known = [f.name for f in fields(self.spec)]
                unknown = [k for k in meta if k not in known]
                if unknown:
                    raise TypeError(f"{self.kind} {key!r}: unknown field(s) "
                                    f"{', '.join(map(repr, unknown))} (fields of "
                                    f"{self.spec.__name__}: {', '.join(known)})")
                spec = self.spec(**meta)
            self._entries[key] = Entry(key, obj, dict(meta), spec)
            return obj

        return decorator

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def build(self, name: str, *args: Any, preset: str | None = None, **kwargs: Any) -> Any:
        """Call the entry, with the preset's arguments under the explicit ones."""
        entry = self.get(name)
        params = {}
        if preset is not None:
            if preset not in entry.presets:
                raise UnknownNameError(f"preset of {self.kind} {name!r}", preset,
                                       sorted(entry.presets))
            params.update(entry.presets[preset])
        params.update(kwargs)
        return entry.obj(*args, **params)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[k] for k in self.names())

    def __len__(self) -> int:
        return len(self._entries)


MODELS = Registry("model", ModelSpec)
DATASETS = Registry("dataset", DatasetSpec)
SCHEDULES = Registry("schedule")
CALLBACKS = Registry("callback")
