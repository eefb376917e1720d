"""The Ray Tune trainable of a federated trial: FedAvg with DP-SGD clients, reported every round.

A round is the trial's "epoch": the sweep sees ``epoch`` = round, ``epochs_planned`` = rounds,
the global model's test accuracy, and ε = the maximum over clients (``epsilon_client_{i}`` for
each). Clients run as Ray actors in the trial's placement-group bundles
(:mod:`sweeps.workers.federated_actors`). A federated trial keeps no checkpoint: one Ray restarts runs
again from the start and, seeded, reaches the same models and ε.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray
from ray import tune

from dp_core.federated import InProcessExecutor, RoundReport, split_flat, train_federated
from dp_core.train import TrainingDiverged
from sweeps.protocol import EpochRow, TrialSpec, wall_clock_ms
from sweeps.workers.federated_actors import RayClientExecutor
from sweeps.workers.threads import use_reserved_cpus
from sweeps.workers.trial import progress_row, worker_dataset

__all__ = ["round_row", "run_federated_trial"]


def round_row(report: RoundReport, *, rounds_planned: int) -> EpochRow:
    """What a federated trial reports after a round (a round is its epoch; ε the clients' maximum)."""
    return progress_row(
        report,
        epoch=report.round,
        steps=max(report.client_steps),
        epochs_planned=rounds_planned,
        client_epsilons=tuple(report.client_epsilons),
    )


def run_federated_trial(unit: TrialSpec, tune_config: dict[str, Any]) -> None:
    """Runs one ``kind: federated`` trial (:data:`sweeps.workers.trainable.RUNNERS`), reporting every round."""
    started = time.perf_counter()
    started_ms = wall_clock_ms()  # the trial's MLflow run starts here, set-up included
    config, federated = split_flat(unit.train)
    # Planned in the driver already (σ, every client's ε per round): not again per trial.
    plan = unit.plan
    use_reserved_cpus()
    data = worker_dataset(config.data)
    # keep_actors: the next trial this (reused) trial actor runs gets its clients warm.
    executor = RayClientExecutor(keep_actors=True) if ray.is_initialized() else InProcessExecutor()
    last_return = started

    def on_round(report: RoundReport) -> None:
        nonlocal last_return
        overhead = time.perf_counter() - last_return - report.train_seconds - report.eval_seconds
        # Before the first round: imports, data, σ, and starting the client actors.
        row = dataclasses.replace(
            round_row(report, rounds_planned=federated.rounds),
            started_ms=started_ms,
            ended_ms=wall_clock_ms(),
            **{"setup_seconds" if last_return == started else "report_seconds": max(overhead, 0.0)},
        )
        tune.report(row.to_result())
        last_return = time.perf_counter()

    try:
        train_federated(
            config, federated, executor=executor, on_round=on_round, data=data, plan=plan, evaluate_test=False
        )
    except TrainingDiverged as error:
        row = EpochRow.of_divergence(str(error), epochs_planned=federated.rounds, started_ms=started_ms)
        tune.report(row.to_result())
