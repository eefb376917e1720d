"""One registry pattern for every plug-in point: a name, what it maps to, and the check that reads it.

Engines, models, datasets and accountants in dp_core, and pruners, trial kinds and runners in
sweeps, are each one :class:`Registry`. Validation reads the registry (``registry.check(value)``
or ``registry.get(value)``), never a hard-coded tuple, so whatever is registered at run time can
be selected from a config like a built-in. Modelled on Opacus' ``accountants/registry.py``: a
plain mapping with ``register`` and ``get``, and an error that lists what is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from dp_core.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; registering a name again replaces its entry.

    Args:
        key: the config key that selects an entry (``"grad_sample_mode"``, ``"model"``), used in
            error messages so that they name what the user wrote.

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
    """

    def __init__(self, key: str) -> None:
        self.key = key
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
        """The entry registered as ``name``.

        Raises:
            ConfigError: nothing is registered as ``name``; the message lists the known names.
        """
        self.check(name)
        return self._entries[name]

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
