"""One registry class for everything kdl builds by name.

Models, datasets, schedules and callbacks are each a `Registry`. An entry is a
callable plus free-form metadata (presets, task, ...). Unknown names raise
`UnknownNameError`, which lists close matches and every available name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


@dataclass
class Entry:
    """A registered object and its metadata."""

    name: str
    obj: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)

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

    Example:

    ```python
    MODELS = Registry("model")

    @MODELS.register("mlp", presets={"tiny": {"units": (8,)}}, tasks=("classification",))
    def mlp(input_shape, num_outputs, units=(64,)):
        ...

    model = MODELS.build("mlp", preset="tiny", input_shape=(4,), num_outputs=3)
    ```
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator: register `obj` under `name` (default: its `__name__`)."""

        def decorator(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = Entry(key, obj, dict(meta))
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


MODELS = Registry("model")
DATASETS = Registry("dataset")
SCHEDULES = Registry("schedule")
CALLBACKS = Registry("callback")
