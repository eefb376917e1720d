"""What planning produces: a trial with its resolved configuration and privacy plan, and the
ε-budget admission rule. Pure (no Ray, no MLflow)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from dp_core.federated import FederatedPlan
from dp_core.privacy_plan import PrivacyPlan
from sweeps.planning.keys import released_params
from sweeps.protocol import TrialSpec

__all__ = ["PlannedTrial", "EpsilonBudget"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlannedTrial:
    """A trial planned by its kind's planner (:mod:`sweeps.planning.kinds`): what it trains, what it spends."""

    #: The kind's name, as in the protocol's TrialSpec; whether its trials can share a pack.
    kind: ClassVar[str] = "central"
    packable: ClassVar[bool] = True
    name: str
    key: str
    axis_values: Mapping[str, Any]
    train_config: Mapping[str, Any]  # flat, with σ resolved: what the worker trains
    plan: PrivacyPlan | FederatedPlan  # by kind: a federated trial's clients are planned one by one

    @property
    def planned_epsilon(self) -> float:
        """ε of the full planned run, ignoring any in-trial budget stop."""
        return self.plan.planned_epsilon

    def spec(self) -> TrialSpec:
        """What a worker needs to run this trial: kind, identity, configuration, params, plan."""
        return TrialSpec(
            kind=self.kind,
            name=self.name,
            key=self.key,
            train=dict(self.train_config),
            params=self.params(),
            plan=self.plan,
        )

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
