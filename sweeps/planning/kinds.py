"""The trial kinds a sweep can plan, by the ``kind`` a flat configuration names.

A new kind of trial is a planner registered here, its plan type in :data:`sweeps.protocol.PLAN_TYPES`
and its runner in :data:`sweeps.workers.trainable.RUNNERS`; nothing else branches on what kind a
trial is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dp_core.registry import Registry
from sweeps.planning.central import plan_central_trial
from sweeps.planning.federated import plan_federated_trial
from sweeps.planning.trials import PlannedTrial

__all__ = ["PLANNERS", "trial_kind", "plan_trial"]

#: kind -> planner(config_values, *, name, axis_values, where) -> PlannedTrial
PLANNERS = Registry("kind", references=True)
PLANNERS.register("central", plan_central_trial)
PLANNERS.register("federated", plan_federated_trial)


def trial_kind(config_values: Mapping[str, Any]) -> str:
    """The kind a flat configuration names (``kind:``; a plain dp_core run when absent)."""
    kind = str(config_values.get("kind") or "central")
    PLANNERS.check(kind)
    return kind


def plan_trial(
    config_values: Mapping[str, Any], *, name: str, axis_values: Mapping[str, Any], where: str = ""
) -> PlannedTrial:
    """Validate one trial's flat configuration and plan its privacy spend, by its kind.

    Raises ConfigError for values no run can use (δ ≥ 1/N, an unreachable target ε, …).
    """
    planner = PLANNERS.get(trial_kind(config_values))
    return planner(config_values, name=name, axis_values=axis_values, where=where)
