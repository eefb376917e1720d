"""Whether a sweep's trials can run on the Ray cluster at all, decided before any trial starts.

Ray Tune does not refuse a trial that no node can ever hold: it queues it and prints Ray's
"insufficient resources" warning every minute, forever. The launcher asks here first. A trial
(its ``resources`` per trial, or ``--resources``) must fit on one node, since Tune reserves a
trial's CPUs and GPUs on a single node; a federated trial spreads its clients' bundles over
nodes, so for it the cluster's totals must suffice.

Local Ray, or a fixed cluster, that cannot hold one trial: a :class:`ConfigError` that names
what was asked, what is there and the ways out. On an autoscaling cluster the launcher may wait
(``--wait-for-resources SECONDS``): the autoscaler is asked for one trial's bundle
(``ray.autoscaler.sdk.request_resources``) and the nodes are read again until one fits or the
time is up, which ends with the same kind of message.

:func:`shortfall` is the pure decision; :func:`require_fit` reads the cluster (Ray). For local
Ray the launcher decides once before starting it too, from :func:`this_machine` (at most what Ray
will find here): a trial too large for this machine stops the sweep in a second, not after Ray's start.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from dp_core.config import ConfigError

__all__ = [
    "trial_slots",
    "NodeResources",
    "TrialResources",
    "cluster_nodes",
    "parse_resources",
    "require_fit",
    "shortfall",
    "this_machine",
    "with_resources",
]

_POLL_SECONDS = 5.0


def _amount(value: float, unit: str) -> str:
    number = f"{value:g}"
    return f"{number} {unit}" if value == 1 else f"{number} {unit}s"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialResources:
    """What one trial reserves: CPUs and GPUs (a fraction of a GPU shares it with other trials)."""

    cpus: float
    gpus: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpus) and self.cpus > 0):
            raise ConfigError(f"Expected cpus to be a number > 0, but got cpus={self.cpus!r}.")
        if not (math.isfinite(self.gpus) and self.gpus >= 0):
            raise ConfigError(f"Expected gpus to be a number >= 0, but got gpus={self.gpus!r}.")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            # Ray's own rule: a fraction of one GPU, or whole GPUs.
            raise ConfigError(f"Expected gpus to be at most 1 or a whole number, but got gpus={self.gpus:g}.")

    def describe(self) -> str:
        return f"{_amount(self.cpus, 'CPU')} and {_amount(self.gpus, 'GPU')}"

    def bundle(self) -> dict[str, float]:
        """The trial's reservation as a Ray resource bundle."""
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeResources:
    """One alive node of the cluster and the CPUs and GPUs it has in all (used or not)."""

    name: str
    #: All the node has, used or not (what Ray's state API reports as its total).
    cpus: float
    gpus: float

    def describe(self) -> str:
        return f"{self.name}: {_amount(self.cpus, 'CPU')}, {_amount(self.gpus, 'GPU')}"


_RESOURCES_SYNTAX = re.compile(r"^\s*(cpus|gpus)\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


def parse_resources(text: str, *, default: TrialResources) -> TrialResources:
    """``"cpus=2,gpus=0"`` (either key may be left out: ``default``'s value stays) as TrialResources."""
    values = {"cpus": default.cpus, "gpus": default.gpus}
    seen = set()
    for part in text.split(","):
        found = _RESOURCES_SYNTAX.match(part)
        if found is None or found.group(1) in seen:
            raise ConfigError(
                f"Expected --resources as cpus=N,gpus=M (each at most once, e.g. --resources cpus=2,gpus=0), "
                f"but got --resources {text!r}."
            )
        seen.add(found.group(1))
        values[found.group(1)] = float(found.group(2))
    return TrialResources(**values)


def with_resources(space: Any, text: str) -> Any:
    """``space`` with its per-trial resources replaced by ``--resources`` ``text`` (keys left out stay)."""
    chosen = parse_resources(text, default=TrialResources(cpus=space.cpus_per_trial, gpus=space.gpus_per_trial))
    if getattr(space, "kind", "train") != "federated":  # federated trials split theirs over their clients
        # Imported here: the space package imports torch, and this module must not (sweeps.submit).
        from sweeps.space.checks import require_one_device

        require_one_device(chosen.gpus, where=f"--resources {text}")
    return dataclasses.replace(space, cpus_per_trial=chosen.cpus, gpus_per_trial=chosen.gpus)


def shortfall(request: TrialResources, nodes: Sequence[NodeResources], *, spread: bool = False) -> str | None:
    """Why no trial of size ``request`` can ever run on ``nodes`` (None: it can).

    A trial must fit on one node; with ``spread`` (a federated trial's client bundles) the
    cluster's totals must hold it.
    """
    if spread:
        cpus, gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
        if cpus >= request.cpus and gpus >= request.gpus:
            return None
        return f"the cluster has {_amount(cpus, 'CPU')} and {_amount(gpus, 'GPU')} in all ({_describe_nodes(nodes)})"
    if any(n.cpus >= request.cpus and n.gpus >= request.gpus for n in nodes):
        return None
    return f"no node has that much ({_describe_nodes(nodes)})"


def _describe_nodes(nodes: Sequence[NodeResources]) -> str:
    if not nodes:
        return "no node is alive"
    shown = "; ".join(n.describe() for n in nodes[:4])
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {shown}" + ("; …" if len(nodes) > 4 else "")


def _suggestion(request: TrialResources, nodes: Sequence[NodeResources]) -> TrialResources | None:
    """The nearest trial size the largest node can hold, to quote in the message."""
    if not nodes:
        return None
    largest = max(nodes, key=lambda n: (n.gpus, n.cpus))
    cpus = min(request.cpus, largest.cpus)
    gpus = min(request.gpus, largest.gpus)
    if cpus <= 0:
        return None
    return TrialResources(cpus=cpus, gpus=gpus if gpus <= 1 else math.floor(gpus))


def cluster_nodes() -> list[NodeResources]:
    """The alive nodes of the connected Ray cluster, with their total CPUs and GPUs."""
    import ray

    return [
        NodeResources(
            name=str(node.get("NodeManagerAddress") or node["NodeID"][:8]),
            cpus=float(node["Resources"].get("CPU", 0.0)),
            gpus=float(node["Resources"].get("GPU", 0.0)),
        )
        for node in ray.nodes()
        if node.get("Alive")
    ]


def this_machine(num_cpus: int | None = None) -> list[NodeResources]:
    """The node local Ray would start here, at most: ``num_cpus`` (``--num-cpus``) or this machine's CPUs,
    and the GPUs torch sees. Ray counts no more (it may count fewer CPUs, under a container's quota)."""
    import torch

    return [
        NodeResources(
            name=platform.node(),
            cpus=float(num_cpus or os.cpu_count() or 1),
            gpus=float(torch.cuda.device_count()),
        )
    ]


def require_fit(
    request: TrialResources,
    *,
    where: str,
    address: str | None,
    wait_seconds: float = 0.0,
    spread: bool = False,
    read_nodes: Callable[[], list[NodeResources]] = cluster_nodes,
    log: Callable[[str], None] = print,
) -> list[NodeResources]:
    """Return the cluster's nodes if one trial of ``request`` fits; else wait (a cluster given by
    ``address`` with ``wait_seconds`` > 0: autoscaling) or raise ConfigError with the ways out.

    ``where`` says where ``request`` came from (the space file, or ``--resources``).
    """
    nodes = read_nodes()
    missing = shortfall(request, nodes, spread=spread)
    if missing is None:
        return nodes
    if address is not None and wait_seconds > 0:
        nodes, missing = _wait(request, wait_seconds=wait_seconds, spread=spread, read_nodes=read_nodes, log=log)
        if missing is None:
            return nodes
    raise ConfigError(_message(request, nodes, missing=missing, where=where, address=address, waited=wait_seconds))


def _wait(
    request: TrialResources,
    *,
    wait_seconds: float,
    spread: bool,
    read_nodes: Callable[[], list[NodeResources]],
    log: Callable[[str], None],
) -> tuple[list[NodeResources], str | None]:
    from ray.autoscaler.sdk import request_resources

    log(
        f"waiting up to {wait_seconds:g} s for the cluster to offer a node with {request.describe()} "
        "(the autoscaler has been asked for one) ..."
    )
    request_resources(bundles=[request.bundle()])
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            time.sleep(max(0.0, min(_POLL_SECONDS, deadline - time.monotonic())))
            nodes = read_nodes()
            missing = shortfall(request, nodes, spread=spread)
            if missing is None or time.monotonic() >= deadline:
                return nodes, missing
    finally:
        request_resources()  # withdraw the request: Tune's own queued trials ask from here on


def _message(
    request: TrialResources,
    nodes: Sequence[NodeResources],
    *,
    missing: str,
    where: str,
    address: str | None,
    waited: float,
) -> str:
    cluster = "the local Ray cluster (this machine)" if address is None else f"the Ray cluster at {address!r}"
    waited_note = f" after waiting {waited:g} s for nodes to join" if address is not None and waited > 0 else ""
    ways = []
    suggested = _suggestion(request, nodes)
    if suggested is not None:
        cpu_only = " (CPU only: trials train on the CPU, much slower for large models)" if suggested.gpus == 0 else ""
        ways.append(f"make each trial smaller: --resources cpus={suggested.cpus:g},gpus={suggested.gpus:g}{cpu_only}")
    ways.append(
        "run on a Ray cluster whose nodes are that large: --address HOST:PORT (or ray://HOST:10001, "
        "or --address auto on a cluster node)"
    )
    if address is not None and waited <= 0:
        ways.append("on an autoscaling cluster, wait for nodes to join: --wait-for-resources SECONDS")
    listed = "".join(f"\n  - {way}" for way in ways)
    return (
        f"Expected a Ray node that can hold one trial, {request.describe()} ({where}), but on {cluster}"
        f"{waited_note} {missing}: no trial could ever start. Ways out:{listed}"
    )


def trial_slots(space: Any) -> float:
    """How many of the space's trials the connected Ray cluster runs at once (at least one)."""
    import ray

    resources = ray.cluster_resources()
    cpus = resources.get("CPU", os.cpu_count() or 1)
    gpus = resources.get("GPU", 0)
    by_cpu = cpus // space.cpus_per_trial
    by_gpu = gpus // space.gpus_per_trial if space.gpus_per_trial else by_cpu
    return max(1.0, float(min(by_cpu, by_gpu)))
