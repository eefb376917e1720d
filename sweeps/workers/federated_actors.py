"""Federated clients as Ray actors, and the resources a federated trial reserves for them.

:class:`RayClientExecutor` is dp_core's ``ClientExecutor`` on Ray: each client is a Ray actor
holding a ``dp_core.federated.LocalClient`` (its shard and DP-SGD state) for the whole run, so
only parameters travel each round. Inside a Ray Tune trial the actors must not compete with the
trial for CPUs it already holds (they would wait forever), so a federated trial reserves one
placement-group bundle per client (:func:`trial_resources`), and the trial itself takes none:
the server only averages and evaluates while its clients wait. The bundles are spread over the
cluster's nodes where possible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
import torch
from ray import tune
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from dp_core.federated import ClientExecutor, ClientSetup, ClientUpdate, LocalClient
from sweeps.protocol import TRIAL_FIELD, unit_of

__all__ = ["RayClientExecutor", "client_bundles", "trial_resources"]


def client_bundles(*, clients: int, cpus: float, gpus: float) -> tune.PlacementGroupFactory:
    """A federated trial's reservation: ``cpus``/``gpus`` split evenly over ``clients`` bundles.

    The head bundle is empty: the trial process (the FedAvg server) holds no resources of its
    own, so its clients' actors can use all of them. ``SPREAD`` puts the clients on distinct
    nodes when the cluster has them, and packs them on one node otherwise.
    """
    bundle = {"CPU": cpus / clients}
    if gpus:
        bundle["GPU"] = gpus / clients
    return tune.PlacementGroupFactory([{}] + [dict(bundle) for _ in range(clients)], strategy="SPREAD")


def trial_resources(space: Any) -> dict[str, float] | Callable[[dict], tune.PlacementGroupFactory]:
    """What ``tune.with_resources`` needs for a space's trials.

    For ordinary spaces: ``{"cpu": cpus, "gpu": gpus}`` per trial, as always. For
    ``kind: federated``: per trial the same totals, split over that trial's clients (the
    ``clients`` axis may differ between trials, so this is a function of the trial's config).
    """
    plain = {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial}
    if getattr(space, "kind", "train") != "federated":
        return plain

    def resources(config: dict) -> tune.PlacementGroupFactory:
        unit = unit_of(config) if isinstance(config.get(TRIAL_FIELD), str) else None
        if unit is None or unit.kind != "federated":
            return tune.PlacementGroupFactory([{"CPU": space.cpus_per_trial, "GPU": space.gpus_per_trial}])
        return client_bundles(clients=int(unit.train["clients"]), cpus=space.cpus_per_trial, gpus=space.gpus_per_trial)

    return resources


def _holds_cpus() -> bool:
    """Whether this Ray worker process holds CPUs of its own (a placement group's head bundle)."""
    return ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0) > 0


class _ClientActor:
    """A Ray actor process that hosts one client at a time (kept for the next trial if asked)."""

    def __init__(self) -> None:
        self._client: LocalClient | None = None

    def start(self, setup: ClientSetup, num_threads: int) -> None:
        self._client = LocalClient(setup, num_threads=num_threads)  # all state fresh: nothing leaks

    def train_round(self, global_state: Mapping[str, torch.Tensor], round_index: int) -> ClientUpdate:
        assert self._client is not None, "start() before train_round()"
        return self._client.train_round(global_state, round_index=round_index)

    def stop(self) -> None:
        self._client = None


# Client actors kept by executors with keep_actors=True, by (placement group, bundle index).
# Starting an actor costs seconds (a process importing torch and Opacus) against milliseconds
# of training per round on small data; a Tune trial actor reused for the next trial (reuse_actors)
# keeps its placement group, so its clients' actors can serve the next trial too. They are owned
# by this process and die with it.
_KEPT: dict[tuple[str | None, int], Any] = {}


class RayClientExecutor(ClientExecutor):
    """Each client a Ray actor, each with ``num_threads`` torch threads (as in-process: same bits).

    Inside a placement group with one bundle per client whose own process holds no CPU (a trial
    scheduled with :func:`trial_resources`), client i takes bundle i and its resources. Anywhere
    else (Ray started by hand, or a trial with an ordinary reservation), the actors ask for no
    resources and share whatever their caller holds: slower than bundles, but it cannot deadlock
    waiting for CPUs the caller itself holds. With ``keep_actors``, :meth:`close` keeps the actor
    processes for the next executor in this process instead of ending them (each hosts a fresh
    client per run, so results do not depend on it).
    """

    def __init__(self, *, num_threads: int = 1, keep_actors: bool = False) -> None:
        self.num_threads = num_threads
        self.keep_actors = keep_actors
        self._actors: list[tuple[tuple[str | None, int], Any]] = []

    def actor_options(self, count: int) -> list[tuple[tuple[str | None, int], dict[str, Any]]]:
        """(key, Ray actor options) for each of ``count`` clients, from where this process runs.

        The key names the slot (placement group and bundle index, or ``None`` and the client's
        index when sharing); kept actors are matched to slots by it.
        """
        group = get_current_placement_group()  # None outside Ray workers and placement groups
        if group is not None and len(group.bundle_specs) == count and not _holds_cpus():
            return [
                (
                    (group.id.hex(), i),
                    {
                        "num_cpus": bundle.get("CPU", 0.0),
                        "num_gpus": bundle.get("GPU", 0.0),
                        "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
                    },
                )
                for i, bundle in enumerate(group.bundle_specs)
            ]
        return [((None, i), {"num_cpus": 0, "num_gpus": 0}) for i in range(count)]

    def start(self, setups: Sequence[ClientSetup]) -> None:
        if not ray.is_initialized():
            raise RuntimeError("RayClientExecutor needs Ray: call ray.init() first, or use InProcessExecutor.")
        actor_class = ray.remote(_ClientActor)
        self._actors = []
        for key, options in self.actor_options(len(setups)):
            kept = _KEPT.pop(key, None) if self.keep_actors else None
            self._actors.append((key, kept if kept is not None else actor_class.options(**options).remote()))
        # Wait until every client is built, so the first round's time is training, not start-up.
        ray.get(
            [
                actor.start.remote(setup, self.num_threads)
                for (_, actor), setup in zip(self._actors, setups, strict=True)
            ]
        )

    def train_round(self, global_state: Mapping[str, torch.Tensor], *, round_index: int) -> list[ClientUpdate]:
        state = ray.put(dict(global_state))  # one copy in the object store, read by every client
        return ray.get([actor.train_round.remote(state, round_index) for _, actor in self._actors])

    def close(self) -> None:
        actors, self._actors = self._actors, []
        if not self.keep_actors:
            for _, actor in actors:
                ray.kill(actor)
            return
        try:
            ray.get([actor.stop.remote() for _, actor in actors])  # free the shard and the model
        except ray.exceptions.RayError:
            for _, actor in actors:  # a dead client is not worth keeping
                ray.kill(actor)
            return
        _KEPT.update(actors)
