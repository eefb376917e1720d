"""One registry pattern for every plug-in point: a name, what it maps to, and the check that reads it.

Engines, models, datasets and accountants in dp_core, and pruners, trial kinds and runners in
sweeps, are each one :class:`Registry`. Validation reads the registry (``registry.check(value)``
or ``registry.get(value)``), never a hard-coded tuple, so whatever is registered at run time can
be selected from a config like a built-in. Modelled on Opacus' ``accountants/registry.py``: a
plain mapping with ``register`` and ``get``, and an error that lists what is known.

A registry made with ``references=True`` also takes an entry as its ``"module:attribute"``
reference, imported on ``get``: where importing the entry is heavy (a trial's runner pulls in
torch, and Ray starts a trial's actor by importing the registry's module) or would cross a layer
(a space names a pruner that the planning layer implements).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from dp_core.errors import ConfigError

__all__ = ["Registry", "resolve_reference"]

T = TypeVar("T")


def resolve_reference(reference: str) -> Any:
    """The object that ``"package.module:attribute"`` names, its module imported now.

    Raises:
        ValueError: the reference has no ``:`` between module and attribute.
    """
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"Expected a reference 'module:attribute', but got {reference!r}.")
    return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    """Named entries of one kind; registering a name again replaces its entry.

    Args:
        key: the config key that selects an entry (``"grad_sample_mode"``, ``"model"``), used in
            error messages so that they name what the user wrote.
        references: a string entry is a ``"module:attribute"`` reference that :meth:`get`
            imports (and a string is never an entry itself).

    Example:
        >>> shapes = Registry[str]("shape")
        >>> shapes.register("circle", "round")
        'round'
        >>> @shapes.register("square")
        ... def square() -> str:
        ...     return "four sides"
        >>> shapes.names()
        ('circle', 'square')
        >>> shapes.get("circle")
        'round'
        >>> shapes.get("triangle")
        Traceback (most recent call last):
        ...
        dp_core.errors.ConfigError: Expected shape to be one of circle, square, but got shape='triangle'.

        With references, an entry is imported when it is first asked for:

        >>> joins = Registry("join", references=True)
        >>> joins.register("path", "os.path:join")
        'os.path:join'
        >>> joins.get("path")("runs", "trial")
        'runs/trial'
    """

    def __init__(self, key: str, *, references: bool = False) -> None:
        self.key = key
        self.references = references
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Register ``entry`` under ``name`` and return it; without ``entry``, a decorator.

        Raises:
            ConfigError: ``name`` is not a non-empty string.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Expected a {self.key} name to be a non-empty string, but got {name!r}.")
        if entry is None:

            def decorate(item: T) -> T:
                self._entries[name] = item
                return item

            return decorate
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's clean-up); a name that is not registered is ignored."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (a reference imported first, with ``references``).

        Raises:
            ConfigError: nothing is registered as ``name``; the message lists the known names.
        """
        self.check(name)
        entry = self._entries[name]
        return resolve_reference(entry) if self.references and isinstance(entry, str) else entry

    def check(self, name: object, *, extra: tuple[str, ...] = ()) -> None:
        """Raise ConfigError unless ``name`` is registered (or one of ``extra``, e.g. ``"auto"``)."""
        if name in extra or (isinstance(name, str) and name in self._entries):
            return
        known = ", ".join([*extra, *sorted(self._entries)])
        raise ConfigError(f"Expected {self.key} to be one of {known}, but got {self.key}={name!r}.")

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self._entries)})"
