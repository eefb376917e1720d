"""A sweep's dataset fetched and verified once, before any trial starts; trials never download.

Left to the trials, a space with ``download: true`` had every trial fetch the dataset itself:
on one machine, dozens of concurrent downloads into one folder; offline, one failure per trial
instead of one clear error. The launcher instead takes the space's ``download`` choice for
itself (:func:`downloads_wanted`), gives the trials a space with ``download: false``
(:func:`without_downloads`), and prepares the data before the sweep opens anything:

- local Ray: in the launcher's own process (:func:`prepare_here`), where the trials will read it;
- a cluster (``--address``): once on every alive node, by a Ray task pinned to that node
  (:func:`prepare_on_nodes`): the first node alone, then the others together, so that nodes that
  share a data volume (``DPSWEEP_DATA`` on a shared mount) find the files the first one fetched
  instead of downloading into one folder at once.

Preparing is what a trial does first, ``dp_core.data.load_dataset``: torchvision fetches the
files if asked (with its progress display) and checks them (CIFAR-10 by its MD5 sums), and the
splits are read whole, so a dataset that prepares here loads in the trials. A missing dataset
without ``download``, or a download that fails (no network), is one :class:`ConfigError`.
Generated datasets (``digits``, the ``synthetic_*`` stand-ins) have nothing to prepare.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

from dp_core.config import ConfigError
from dp_core.dataset_facts import FILE_DATASETS  # the datasets read from files under a data folder

__all__ = ["FILE_DATASETS", "datasets_of", "downloads_wanted", "prepare_here", "prepare_on_nodes", "without_downloads"]


def datasets_of(space: Any) -> list[str]:
    """Every dataset a space's trials train on: ``fixed.dataset`` or the values of a ``dataset`` axis."""
    axis = space.axes.get("dataset")
    names = list(axis) if isinstance(axis, (list, tuple)) else [space.fixed.get("dataset", "digits")]
    return list(dict.fromkeys(str(name) for name in names))


def downloads_wanted(space: Any) -> bool:
    """Whether the space lets its data be fetched (``download: true`` under fixed)."""
    return bool(space.fixed.get("download", False))


def without_downloads(space: Any) -> Any:
    """The space its trials run: ``download: false``, whatever the file said (the launcher prepares)."""
    if not downloads_wanted(space):
        return space
    return dataclasses.replace(space, fixed={**space.fixed, "download": False})


def prepare_here(
    names: Sequence[str], *, root: str | None, download: bool, log: Callable[[str], None] = print
) -> list[str]:
    """Fetch (if ``download``) and verify each file-backed dataset of ``names`` in this process.

    Returns one line per dataset prepared; raises ConfigError if one is missing or cannot be fetched.
    """
    from dp_core.data import load_dataset

    where = root or "the data folder ($DPSWEEP_DATA, else ~/.cache/dpsweep/data)"
    done = []
    for name in names:
        if name not in FILE_DATASETS:
            continue
        log(
            f"data: {'fetching (if missing) and ' if download else ''}verifying {name} under {where} on "
            f"{platform.node()} ..."
        )
        started = time.monotonic()
        try:
            splits = load_dataset(name, root=root, download=download)
        except ConfigError as error:
            raise ConfigError(
                f"{error} In a sweep: set download: true under fixed in the space file, or copy the files there first."
            ) from None
        except Exception as error:  # noqa: BLE001 - a failed download: URLError, OSError, torchvision's RuntimeError
            raise ConfigError(
                f"Could not fetch dataset {name!r} into {where} on {platform.node()} "
                f"({type(error).__name__}: {' '.join(str(error).split()).rstrip('.')}). Without network access, copy "
                "torchvision's files for it into that folder (or set DPSWEEP_DATA to a folder that holds them); "
                "no trial has been started."
            ) from None
        line = (
            f"data: {name} ready on {platform.node()} ({len(splits.train)} train, {len(splits.test)} test "
            f"examples; {time.monotonic() - started:.1f} s)"
        )
        log(line)
        done.append(line)
    return done


def prepare_on_nodes(
    names: Sequence[str], *, root: str | None, download: bool, log: Callable[[str], None] = print
) -> list[str]:
    """:func:`prepare_here` once on every alive node of the connected Ray cluster (Ray tasks pinned
    to each node): the first node alone, then the rest at once. Returns their lines."""
    if not any(name in FILE_DATASETS for name in names):
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    log(f"data: preparing {', '.join(n for n in names if n in FILE_DATASETS)} on each of {len(nodes)} node(s) ...")
    # No CPU reserved: it must run even while a node's CPUs are all taken by other jobs' trials.
    task = ray.remote(num_cpus=0, max_retries=0)(_prepare_task)

    def launch(node: dict[str, Any]) -> Any:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        return task.options(scheduling_strategy=strategy).remote(list(names), root, download)

    lines: list[str] = []
    batches = [nodes[:1], nodes[1:]]
    for batch in batches:
        pending = {launch(node): node for node in batch}
        for ref, node in pending.items():
            try:
                lines += ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if isinstance(error.cause, ConfigError) else error
                raise ConfigError(f"On node {node.get('NodeManagerAddress', node['NodeID'])}: {cause}") from None
    for line in lines:
        log(f"  {line}")
    if root is None and not os.environ.get("DPSWEEP_DATA"):
        log(
            "note: nodes that join later (an autoscaling cluster) find the data only if DPSWEEP_DATA (or data_root) "
            "is a folder on a volume every node mounts, such as /mnt/dpsweep/data in the infra/ configs"
        )
    return lines


def _prepare_task(names: list[str], root: str | None, download: bool) -> list[str]:
    return prepare_here(names, root=root, download=download, log=lambda _line: None)
