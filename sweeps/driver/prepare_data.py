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

An own dataset (``dataset:`` a mapping, :mod:`dp_core.own_data`) is read here once, before
planning (:func:`read_own`: the accountant needs its N, and a bad file stops the sweep before
anything is created); its trials get the driver's copy through Ray's object store. Its digest is
kept in the sweep's folder (:func:`keep_digests`) and checked on ``--resume`` (:func:`check_digests`):
a sweep resumed on changed data would mix results of two datasets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dp_core.config import ConfigError
from dp_core.dataset_facts import FILE_DATASETS  # the datasets read from files under a data folder
from dp_core.dataset_spec import DatasetSpec

__all__ = [
    "DIGESTS_FILE",
    "FILE_DATASETS",
    "check_digests",
    "datasets_of",
    "downloads_wanted",
    "keep_digests",
    "own_specs",
    "prepare_here",
    "prepare_on_nodes",
    "read_own",
    "without_downloads",
]

#: In a sweep's folder: the digest of each own dataset it trains on, checked on --resume.
DIGESTS_FILE = "own_datasets.json"


def datasets_of(space: Any) -> list[str]:
    """Every dataset a space's trials train on: ``fixed.dataset`` or the values of a ``dataset`` axis."""
    axis = space.axes.get("dataset")
    names = list(axis) if isinstance(axis, (list, tuple)) else [space.fixed.get("dataset", "digits")]
    return list(dict.fromkeys(str(name) for name in names if isinstance(name, str)))


def own_specs(space: Any) -> list[DatasetSpec]:
    """The own dataset a space trains on (``fixed.dataset`` a mapping), as a one-item list; else none."""
    raw = space.fixed.get("dataset")
    return [DatasetSpec.from_mapping(raw)] if isinstance(raw, dict) else []


def _print(line: str) -> None:
    print(line, flush=True)


def read_own(space: Any, *, log: Callable[[str], None] = _print) -> tuple[Any, ...]:
    """Read the space's own dataset once, here, and keep it for this process (``dp_core.own_data``), so that
    planning finds its N and the trials get this copy. Prints its size and any caveat of its reading.

    Raises:
        ConfigError: the data cannot be read or trained on (the message names the space file).
    """
    from dp_core.own_data import provide, read_dataset

    datasets = []
    for spec in own_specs(space):
        started = time.monotonic()
        try:
            dataset = read_dataset(spec)
        except ConfigError as error:
            raise ConfigError(f"{error} (dataset of {space.source})") from None
        provide(dataset)
        splits = dataset.splits
        log(
            f"data: {spec.display_name} read from {spec.source}: {len(splits.train)} train"
            f"{f', {len(splits.validation)} validation' if splits.validation is not None else ''}, "
            f"{len(splits.test)} test examples of shape {splits.input_shape}, {splits.num_classes} classes "
            f"(digest {dataset.digest}; {time.monotonic() - started:.1f} s)"
        )
        for caveat in dataset.caveats:
            log(f"note: {caveat}")
        datasets.append(dataset)
    return tuple(datasets)


def keep_digests(folder: Path, datasets: Sequence[Any]) -> None:
    """Write each own dataset's digest into the sweep's ``folder`` (once: a resumed sweep keeps the first)."""
    file = folder / DIGESTS_FILE
    if datasets and not file.exists():
        file.write_text(json.dumps({d.spec.source: d.digest for d in datasets}, indent=1))


def check_digests(folder: Path, datasets: Sequence[Any]) -> None:
    """Raise ConfigError if an own dataset differs from the one the sweep in ``folder`` started on."""
    file = folder / DIGESTS_FILE
    kept = json.loads(file.read_text()) if file.exists() else {}
    for dataset in datasets:
        before = kept.get(dataset.spec.source)
        if before is not None and before != dataset.digest:
            raise ConfigError(
                f"Expected dataset {dataset.spec.source} to be the data sweep {folder.name} started on (digest "
                f"{before}), but got digest {dataset.digest}: the data changed since. A resumed sweep on other data "
                "would mix the results of two datasets; restore the data, or start a new sweep (without --resume)."
            )
        if before is None and kept:
            raise ConfigError(
                f"Expected the own dataset of sweep {folder.name} ({', '.join(kept)}), but got {dataset.spec.source}."
            )


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
