"""The one registry of sweeps' plug-in points: :class:`dp_core.registry.Registry`, whose entries may be references.

Pruners (:data:`sweeps.space.model.PRUNERS`), trial kinds (:data:`sweeps.planning.kinds.PLANNERS`,
:data:`sweeps.protocol.PLAN_TYPES`) and runners (:data:`sweeps.workers.trainable.RUNNERS`) are each a
:class:`LazyRegistry`. An entry is the object itself or, where importing it is heavy or would cross
a layer, its ``"module:attribute"`` reference, imported by :meth:`LazyRegistry.get`: a trial's actor
starts without torch (the runners), and a space can name a pruner without importing the planning
that implements it. Validation reads the registry (``check``/``get``), so a name registered at run
time is selectable like a built-in one, and an unknown name lists the known ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from dp_core.registry import Registry

__all__ = ["LazyRegistry", "resolve_reference"]


def resolve_reference(reference: str) -> Any:
    """The object that ``"package.module:attribute"`` names, its module imported now.

    Raises:
        ValueError: the reference has no ``:`` between module and attribute.
    """
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"Expected a reference 'module:attribute', but got {reference!r}.")
    return getattr(importlib.import_module(module), attribute)


class LazyRegistry(Registry[Any]):
    """A :class:`~dp_core.registry.Registry` whose string entries are ``"module:attribute"`` references.

    Example:
        >>> joins = LazyRegistry("join")
        >>> joins.register("path", "os.path:join")
        'os.path:join'
        >>> joins.get("path")("runs", "trial")
        'runs/trial'
        >>> joins.check("url")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dp_core...ConfigError: Expected join to be one of path, but got join='url'.
    """

    def get(self, name: str) -> Any:
        """The entry registered as ``name``, a reference imported first.

        Raises:
            ConfigError: nothing is registered as ``name``; the message lists the known names.
        """
        entry = super().get(name)
        return resolve_reference(entry) if isinstance(entry, str) else entry
