"""Own datasets shipped to the workers through Ray's object store, read by the driver once.

The driver reads a space's own dataset before planning (it needs N). Its trials, packs,
federated trials and confirmation runs get that copy: the driver puts it into Ray's object store
(:func:`shipped`, or ``tune.with_parameters``), each node fetches it once, and every worker
:func:`receive`\\ s it into ``dp_core.own_data``'s process-local provider before training, so
that ``dp_core`` finds it there and no trial reads the files again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["receive", "shipped"]


def shipped() -> Any:
    """This process's own datasets (``dp_core.own_data.provided()``) put into Ray's object store once; an
    ObjectRef that a task gets as its argument, or None when the sweep has none."""
    from dp_core.own_data import provided

    datasets = provided()
    if not datasets:
        return None
    import ray

    return ray.put(datasets)


def receive(datasets: Sequence[Any] | None) -> None:
    """Keep the datasets a worker got from the object store for ``dp_core``'s loaders in this process."""
    if not datasets:
        return
    from dp_core.own_data import provide

    for dataset in datasets:
        provide(dataset)
