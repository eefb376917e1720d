"""Planning trials before they run: resolved σ, planned ε, and the ε-budget admission rule.

Planning is pure (no Ray, no MLflow): a trial's privacy spend is a function of its
configuration, so whether it may run is decided before any compute is spent on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dp_core.config import TrainConfig
from dp_core.data import canonical_train_size
from dp_core.federated import is_federated
from dp_core.plan import PrivacyPlan, plan_privacy
from sweeps.keys import released_params, trial_key

__all__ = ["PlannedTrial", "EpsilonBudget", "plan_trial"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlannedTrial:
    name: str
    key: str
    axis_values: Mapping[str, Any]
    train_config: Mapping[str, Any]   # flat, with σ resolved: what the worker trains
    plan: PrivacyPlan

    @property
    def planned_epsilon(self) -> float:
        """ε of the full planned run, ignoring any in-trial budget stop."""
        return self.plan.epsilon_by_epoch[-1]

    def spec(self) -> dict[str, Any]:
        """What a worker needs to run this trial (JSON-able): configuration, identity, plan."""
        plan = dataclasses.asdict(self.plan)
        plan["epsilon_by_epoch"] = list(plan["epsilon_by_epoch"])
        return {"train": dict(self.train_config), "name": self.name, "key": self.key, "params": self.params(),
                "plan": plan}

    def params(self) -> dict[str, Any]:
        """What the tracker logs as the run's params: every setting but the seed, plus the planned spend."""
        return {
            **released_params(self.train_config),
            **{f"axis.{k}": v for k, v in self.axis_values.items()},
            "planned_epsilon": self.planned_epsilon if math.isfinite(self.planned_epsilon) else "inf",
            "sample_rate_resolved": self.plan.sample_rate,
            "steps_planned": self.plan.planned_steps,
        }


@dataclasses.dataclass(frozen=True)
class EpsilonBudget:
    """Admit a trial only if its whole planned run stays within the budget (None: no budget)."""

    budget: float | None

    def rejects(self, trial: PlannedTrial) -> str | None:
        """The reason this trial must not start, or None if it may."""
        if self.budget is None or trial.planned_epsilon <= self.budget:
            return None
        return (
            f"planned ε = {trial.planned_epsilon:.3f} (δ = {trial.plan.delta:g}, "
            f"{trial.plan.accountant.upper()} accountant) exceeds the budget ε = {self.budget:g}"
        )


def plan_trial(config_values: Mapping[str, Any], *, name: str, axis_values: Mapping[str, Any], where: str = "") -> PlannedTrial:
    """Validate one trial's flat configuration and plan its privacy spend.

    Raises ConfigError for values no run can use (δ ≥ 1/N, an unreachable target ε, …).
    ``kind: federated`` configurations are planned per client (ε is the maximum over clients).
    """
    if is_federated(config_values):
        from sweeps.federated_planning import plan_federated_trial  # it subclasses PlannedTrial

        return plan_federated_trial(config_values, name=name, axis_values=axis_values, where=where)
    config = TrainConfig.from_dict(config_values, where=where)
    train_size = canonical_train_size(config.data.dataset, validation_fraction=config.data.validation_fraction)
    # Plan the full run without the in-trial budget stop: whether it may start at all is the
    # EpsilonBudget rule's decision, made on the whole planned spend.
    plan = plan_privacy(config.replace(epsilon_budget=None), train_size=train_size)
    resolved = config.replace(noise_multiplier=plan.noise_multiplier) if plan.private else config
    flat = resolved.to_dict()
    return PlannedTrial(name=name, key=trial_key(flat, name=name), axis_values=dict(axis_values), train_config=flat, plan=plan)


_MECHANISM_KEYS = ("dataset", "noise_multiplier", "target_epsilon", "batch_size", "sample_rate", "epochs",
                   "delta", "accountant", "disable_dp")


def _plan_group(jobs: list[tuple[dict[str, Any], str, dict[str, Any], str]]) -> list[PlannedTrial]:
    return [plan_trial(values, name=name, axis_values=axis_values, where=where)
            for values, name, axis_values, where in jobs]


def plan_grid(space: Any, *, workers: int | None = None) -> list[PlannedTrial]:
    """Plan every grid point, in grid order, spreading distinct privacy mechanisms over processes.

    Trials that differ only in C or the learning rate share one mechanism (σ, q, steps, δ), whose
    ε curve is computed once per process (cached); distinct mechanisms are independent PRV
    computations of up to seconds each, so they run in parallel.
    """
    import json
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    groups: dict[str, list[tuple[int, tuple[dict[str, Any], str, dict[str, Any], str]]]] = {}
    for index, values in enumerate(space.grid_axis_values()):
        config = space.trial_config(values, number=index)
        mechanism = json.dumps({k: config.get(k) for k in _MECHANISM_KEYS}, sort_keys=True, default=str)
        groups.setdefault(mechanism, []).append((index, (config, f"trial_{index:04d}", values, str(space.source))))
    workers = min(workers or os.cpu_count() or 1, len(groups))
    batches = [[job for _, job in group] for group in groups.values()]
    if workers <= 1:
        planned_groups = [_plan_group(batch) for batch in batches]
    else:
        # fork: the children inherit the imported modules; they run only numpy/scipy accounting.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            planned_groups = list(pool.map(_plan_group, batches))
    order = [index for group in groups.values() for index, _ in group]
    planned = [trial for group in planned_groups for trial in group]
    return [trial for _, trial in sorted(zip(order, planned), key=lambda pair: pair[0])]
