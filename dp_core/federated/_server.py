"""The FedAvg server: partition the data, start the clients, average their models every round.

``train_federated(config, federated, on_round=...)`` reads top to bottom like ``dp_core.train``:
plan the privacy spend, load and partition the data, build the global model, start the clients
on an executor, then for each round send the global parameters, average the clients' updates
weighted by their shard sizes, evaluate on the test set, report. A sweep observes the run only
through ``on_round``; raising ``StopTraining`` there ends it after the current round.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from dp_core.config import TrainConfig
from dp_core.data import DatasetSplits, load_data
from dp_core.federated._client import ClientSetup, client_seed
from dp_core.federated._config import FederatedConfig
from dp_core.federated._executor import ClientExecutor, InProcessExecutor
from dp_core.federated._partition import partition
from dp_core.federated._plan import FederatedPlan, plan_federated
from dp_core.models import build_configured_model
from dp_core.train import ProgressReport, asks_to_stop, evaluate_splits, resolve_device

__all__ = ["RoundReport", "FederatedResult", "fed_avg", "partition_data", "train_federated"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundReport(ProgressReport):
    """What one round produced. ``epsilon`` is the maximum of ``client_epsilons`` (at ``delta``);
    ``train_seconds`` is the round's client training, as the server waited for it.

    Nothing measured on the clients' data is reported: a client sends only its noised parameters
    and its shard size (see ``ClientUpdate``); losses and accuracy are the global model's on the
    validation and test splits (None where not measured, as in ``EpochReport``).
    """

    round: int
    client_steps: tuple[int, ...]  # each client's DP-SGD steps so far
    client_epsilons: tuple[float, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FederatedResult:
    config: TrainConfig  # the clients' local configuration, σ resolved
    federated: FederatedConfig
    plan: FederatedPlan
    reports: tuple[RoundReport, ...]
    stopped_early: bool
    model: nn.Module  # the global model after the last round

    @property
    def final(self) -> RoundReport:
        return self.reports[-1]


def fed_avg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ_i w_i θ_i / Σ_i w_i for every floating-point tensor (McMahan et al. 2017, Algorithm 1).

    Summed in float64 and rounded once to each tensor's dtype, so averaging identical models
    returns them bit for bit and integer weights give the exactly rounded mean. Non-floating
    tensors (counters) must agree across clients and are copied.
    """
    if not states or len(states) != len(weights):
        raise ValueError(
            f"Expected one weight per state and at least one state, but got {len(states)} "
            f"states and {len(weights)} weights."
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Expected finite weights >= 0 with a positive sum, but got weights={list(weights)}.")
    total = float(sum(weights))
    averaged: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            if any(not torch.equal(state[key], first) for state in states[1:]):
                raise ValueError(f"Expected the non-floating tensor {key!r} to agree across clients to average them.")
            averaged[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].to(torch.float64) * float(weight)
        averaged[key] = (acc / total).to(first.dtype)
    return averaged


def partition_data(data: DatasetSplits, config: TrainConfig, federated: FederatedConfig) -> list[torch.Tensor]:
    """The clients' shards of ``data.train`` as index tensors (seeded by ``config.seed``)."""
    return partition(
        data.train.tensors[1],
        clients=federated.clients,
        scheme=federated.partition,
        dirichlet_alpha=federated.dirichlet_alpha,
        seed=config.seed,
    )


def train_federated(
    config: TrainConfig,
    federated: FederatedConfig,
    *,
    executor: ClientExecutor | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    data: DatasetSplits | None = None,
    plan: FederatedPlan | None = None,
    evaluate_test: bool = True,
) -> FederatedResult:
    """FedAvg with DP-SGD clients: ``federated.rounds`` rounds, every round reported.

    ``config`` is each client's local DP-SGD configuration. ``executor`` runs the clients
    (default: :class:`InProcessExecutor`); it is started and closed here. The same ``config``,
    ``federated`` and data give the same global model bit for bit on any executor. ``plan`` may
    be passed pre-computed (a sweep plans every trial before it starts); one that does not
    describe this configuration and partition is refused.
    """
    data = data if data is not None else load_data(config.data)
    shards = partition_data(data, config, federated)
    shard_sizes = [len(shard) for shard in shards]
    if plan is None:
        plan = plan_federated(config, federated, shard_sizes=shard_sizes)
    else:
        plan.check_matches(config, federated, shard_sizes=shard_sizes)
    device = resolve_device(config.device)

    train_images, train_labels = data.train.tensors
    eval_splits = {
        "val": tuple(t.to(device) for t in data.validation.tensors) if data.validation is not None else None,
        "test": tuple(t.to(device) for t in data.test.tensors) if evaluate_test else None,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the global model's initialisation
        model = build_configured_model(config, input_shape=data.input_shape, num_classes=data.num_classes)
    model = model.to(device)
    setups = [
        ClientSetup(
            index=client.client,
            seed=client_seed(config.seed, client.client),
            config=config,
            images=train_images[shard].clone(),
            labels=train_labels[shard].clone(),
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            private=plan.private,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=client.sample_rate,
            steps_per_round=client.steps_per_round,
            total_steps=client.steps_after(plan.planned_rounds),
        )
        for client, shard in zip(plan.clients, shards, strict=True)
    ]

    reports: list[RoundReport] = []
    stopped_early = False
    with executor if executor is not None else InProcessExecutor() as clients:
        clients.start(setups)
        for round_index in range(1, plan.max_rounds + 1):
            started = time.perf_counter()
            global_state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
            updates = clients.train_round(global_state, round_index=round_index)
            weights = [update.num_examples for update in updates]
            model.load_state_dict(fed_avg([update.state for update in updates], weights))
            train_seconds = time.perf_counter() - started

            started = time.perf_counter()
            measured = evaluate_splits(model, eval_splits, batch_size=config.test_batch_size)
            eval_seconds = time.perf_counter() - started
            stopped_early = round_index == plan.max_rounds and plan.stops_early
            client_epsilons = plan.client_epsilons(round_index)
            report = RoundReport(
                round=round_index,
                client_steps=tuple(c.steps_after(round_index) for c in plan.clients),
                **measured,
                epsilon=max(client_epsilons),
                client_epsilons=client_epsilons,
                delta=plan.delta,
                accountant=plan.accountant,
                noise_multiplier=plan.noise_multiplier,
                train_seconds=train_seconds,
                eval_seconds=eval_seconds,
                stopped_by_budget=stopped_early,
            )
            reports.append(report)
            if asks_to_stop(on_round, report):
                stopped_early = True
                break

    resolved = config.replace(noise_multiplier=plan.noise_multiplier) if plan.private else config
    return FederatedResult(
        config=resolved,
        federated=federated,
        plan=plan,
        reports=tuple(reports),
        stopped_early=stopped_early,
        model=model,
    )
