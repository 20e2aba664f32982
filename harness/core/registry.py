"""Named registries of building blocks, so tricks can add parts without editing the harness."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import ClassVar, Generic, TypeVar

from harness.core.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object table whose lookups fail with the list of valid names.

    Args:
        kind: What the entries are, for error messages ("stem", "optimizer", ...).
    """

    # Every registry ever made, so tests can walk them all (e.g. for the names tricks add).
    instances: ClassVar[list[Registry]] = []
    # The modules that registered entries, in order. A spawned process (a DDP rank) starts with
    # none registered; importing these again registers the same entries there.
    _modules: ClassVar[dict[str, None]] = {}

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # name -> the module that registered it
        Registry.instances.append(self)

    def register(self, name: str, *, module: str | None = None) -> Callable[[T], T]:
        """Return a decorator that stores its argument under ``name``.

        Args:
            name: The entry's name.
            module: The module whose import registers it; default: the caller's. (An entry may
                be an instance whose class lives elsewhere, so its own ``__module__`` would
                not name it.)
        """
        caller = module or sys._getframe(1).f_globals.get("__name__", "__main__")

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            self._origins[name] = caller
            if caller != "__main__":
                Registry._modules[caller] = None
            return obj

        return add

    @classmethod
    def modules(cls) -> list[str]:
        """Return the modules that registered entries in this process, in the order they did."""
        return list(cls._modules)

    def origin(self, name: str) -> str:
        """Return the module that registered ``name``."""
        return self._origins[name]

    def get(self, name: str) -> T:
        """Return the entry called ``name``; raise a UserError naming the choices if absent."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        """Return the registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
