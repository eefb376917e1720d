"""Planning federated trials: one σ for all clients, ε per client, the run's ε as their maximum.

Pure like :mod:`sweeps.planning.central` (no Ray, no MLflow). A federated trial's privacy depends on its
clients' shard sizes (q_i = B / n_i), so planning partitions the training labels exactly as the
trial will (same function, same seed); for label-skewed shards that needs the labels, which are
loaded once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from dp_core.data import load_dataset
from dp_core.federated import partition, plan_federated, split_flat, to_flat
from sweeps.planning.keys import released_params, trial_key
from sweeps.planning.trials import PlannedTrial

__all__ = ["FederatedPlannedTrial", "plan_federated_trial"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FederatedPlannedTrial(PlannedTrial):
    """A planned federated trial: ``plan`` is the clients' FederatedPlan, ε is the max over clients.

    ``train_config`` is the flat federated configuration (``kind: federated``, σ resolved).
    """

    kind: ClassVar[str] = "federated"
    packable: ClassVar[bool] = False  # its clients are Ray actors of their own

    def params(self) -> dict[str, Any]:
        clients = self.plan.clients
        worst = max(clients, key=lambda c: c.epsilon_by_round[-1])
        per_client: dict[str, Any] = {}
        for client in clients:
            eps = client.epsilon_by_round[-1]
            per_client[f"client_{client.client}.shard_size"] = client.shard_size
            per_client[f"client_{client.client}.sample_rate"] = client.sample_rate
            per_client[f"client_{client.client}.planned_epsilon"] = eps if math.isfinite(eps) else "inf"
        return {
            **released_params(self.train_config),
            **{f"axis.{k}": v for k, v in self.axis_values.items()},
            "planned_epsilon": self.planned_epsilon if math.isfinite(self.planned_epsilon) else "inf",
            # The client whose ε is the run's: its sampling rate and total steps.
            "sample_rate_resolved": worst.sample_rate,
            "steps_planned": worst.steps_after(self.plan.planned_rounds),
            **per_client,
        }


@functools.lru_cache(maxsize=4)
def _train_labels(dataset: str, root: str | None, download: bool, validation_fraction: float) -> torch.Tensor:
    return load_dataset(dataset, root=root, download=download, validation_fraction=validation_fraction).train.tensors[1]


def plan_federated_trial(
    config_values: Mapping[str, Any], *, name: str, axis_values: Mapping[str, Any], where: str = ""
) -> FederatedPlannedTrial:
    """Validate one federated trial's flat configuration and plan every client's privacy spend.

    Raises ConfigError for values no run can use (a shard smaller than the batch, δ ≥ 1/n_i, …).
    """
    config, federated = split_flat(config_values, where=where)
    labels = _train_labels(
        config.data.dataset, config.data.data_root, config.data.download, config.data.validation_fraction
    )
    shards = partition(
        labels,
        clients=federated.clients,
        scheme=federated.partition,
        dirichlet_alpha=federated.dirichlet_alpha,
        seed=config.seed,
    )
    # As for single runs: whether the trial may start is EpsilonBudget's decision on the whole
    # planned spend; the in-trial budget stop stays in the configuration the worker trains.
    plan = plan_federated(config.replace(epsilon_budget=None), federated, shard_sizes=[len(s) for s in shards])
    resolved = config.replace(noise_multiplier=plan.noise_multiplier) if plan.private else config
    flat = to_flat(resolved, federated)
    return FederatedPlannedTrial(
        name=name, key=trial_key(flat, name=name), axis_values=dict(axis_values), train_config=flat, plan=plan
    )
