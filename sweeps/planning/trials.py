"""What planning produces: a trial with its resolved configuration and privacy plan, and the
ε-budget admission rule. Pure (no Ray, no MLflow)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dp_core.plan import PrivacyPlan
from sweeps.planning.keys import released_params

__all__ = ["PlannedTrial", "EpsilonBudget"]


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
