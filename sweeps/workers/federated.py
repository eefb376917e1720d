"""The Ray Tune trainable of a federated trial: FedAvg with DP-SGD clients, reported every round.

A round is the trial's "epoch": the sweep sees ``epoch`` = round, ``epochs_planned`` = rounds,
the global model's test accuracy, and ε = the maximum over clients (``epsilon_client_{i}`` for
each). Clients run as Ray actors in the trial's placement-group bundles
(:mod:`sweeps.workers.federated_actors`). A federated trial keeps no checkpoint: one Ray restarts runs
again from the start and, seeded, reaches the same models and ε.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import ray
import torch
from ray import tune

from dp_core.federated import FederatedPlan, InProcessExecutor, RoundReport, split_flat, train_federated
from dp_core.train import TrainingDiverged
from sweeps.workers.federated_actors import RayClientExecutor
from sweeps.workers.trial import trial_spec, worker_dataset

__all__ = ["round_metrics", "run_federated_trial"]


def _finite_or_minus_one(value: float) -> float:
    return value if math.isfinite(value) else -1.0  # ε = ∞ (no noise) is reported as -1: JSON


def round_metrics(report: RoundReport, *, rounds_planned: int) -> dict[str, Any]:
    """What a federated trial reports to Ray Tune after a round (the keys of an epoch's report)."""
    return {
        "epoch": report.round,
        "epochs_planned": rounds_planned,
        "steps": max(report.client_steps),
        "val_accuracy": report.val_accuracy,
        "val_loss": report.val_loss,
        "epsilon": _finite_or_minus_one(report.epsilon),
        "delta": report.delta,
        "accountant": report.accountant,
        "epoch_seconds": report.train_seconds,
        "eval_seconds": report.eval_seconds,
        "stopped_by_budget": report.stopped_by_budget,
        **{f"epsilon_client_{i}": _finite_or_minus_one(eps) for i, eps in enumerate(report.client_epsilons)},
    }


def run_federated_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable for a flat ``kind: federated`` configuration."""
    started = time.perf_counter()
    spec = trial_spec(tune_config)
    config, federated = split_flat(spec["train"])
    # Planned in the driver already (σ, every client's ε per round): not again per trial.
    plan = FederatedPlan.from_dict(spec["plan"]) if "plan" in spec else None
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)
    data = worker_dataset(config.data)
    # keep_actors: the next trial this (reused) trial actor runs gets its clients warm.
    executor = RayClientExecutor(keep_actors=True) if ray.is_initialized() else InProcessExecutor()
    last_return = started

    def on_round(report: RoundReport) -> None:
        nonlocal last_return
        overhead = time.perf_counter() - last_return - report.train_seconds - report.eval_seconds
        metrics = round_metrics(report, rounds_planned=federated.rounds)
        # Before the first round: imports, data, σ, and starting the client actors.
        metrics["setup_seconds" if last_return == started else "report_seconds"] = max(overhead, 0.0)
        tune.report(metrics)
        last_return = time.perf_counter()

    try:
        train_federated(config, federated, executor=executor, on_round=on_round, data=data, plan=plan,
                        evaluate_test=False)
    except TrainingDiverged as error:
        tune.report({"diverged": str(error), "epoch": 0, "epochs_planned": federated.rounds,
                     "val_accuracy": 0.0, "epsilon": -1.0, "stopped_by_budget": False})
