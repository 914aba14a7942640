"""One registry class for every extension point: strategies, task types, model sources, built-in datasets.

Entries may be objects or lazy ``"module:attribute"`` strings, so that listing names never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no registry entry has; the message suggests the nearest ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; people should read plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> entry mapping that refuses clashes and suggests the nearest name for typos."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str) -> T | str:
        """Add ``entry`` under ``name``; an entry may be a ``"module:attr"`` string imported on first use."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T | str:
        """Remove ``name`` and return its entry: for tests and plugins that add an entry for a while."""
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """Return the entry for ``name``, importing it if it was registered lazily."""
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unknown_message(self, name: str) -> str:
        """Say that ``name`` is unknown, with the nearest known names."""
        near = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
