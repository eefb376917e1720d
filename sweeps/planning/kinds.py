"""The trial kinds a sweep can plan, by the ``kind`` a flat configuration names.

A new kind of trial is a planner here and a runner in :mod:`sweeps.workers.kinds`; nothing else
branches on what kind a trial is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dp_core.config import ConfigError
from sweeps.planning.central import plan_central_trial
from sweeps.planning.federated import plan_federated_trial
from sweeps.planning.trials import PlannedTrial

__all__ = ["PLANNERS", "trial_kind", "plan_trial"]

#: kind -> planner(config_values, *, name, axis_values, where) -> PlannedTrial
PLANNERS: dict[str, Callable[..., PlannedTrial]] = {
    "central": plan_central_trial,
    "federated": plan_federated_trial,
}


def trial_kind(config_values: Mapping[str, Any]) -> str:
    """The kind a flat configuration names (``kind:``; a plain dp_core run when absent)."""
    kind = str(config_values.get("kind") or "central")
    if kind not in PLANNERS:
        raise ConfigError(f"Expected kind to be one of {sorted(PLANNERS)}, but got kind={kind!r}.")
    return kind


def plan_trial(config_values: Mapping[str, Any], *, name: str, axis_values: Mapping[str, Any],
               where: str = "") -> PlannedTrial:
    """Validate one trial's flat configuration and plan its privacy spend, by its kind.

    Raises ConfigError for values no run can use (δ ≥ 1/N, an unreachable target ε, …).
    """
    return PLANNERS[trial_kind(config_values)](config_values, name=name, axis_values=axis_values, where=where)
