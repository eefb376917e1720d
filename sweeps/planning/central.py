"""Planning one centrally trained trial (a lone dp_core run): σ resolved, ε after every epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dp_core.config import TrainConfig
from dp_core.dataset_facts import canonical_train_size
from dp_core.errors import ConfigError
from dp_core.privacy_plan import plan_privacy
from sweeps.planning.keys import trial_key
from sweeps.planning.trials import PlannedTrial

__all__ = ["plan_central_trial"]


def plan_central_trial(
    config_values: Mapping[str, Any], *, name: str, axis_values: Mapping[str, Any], where: str = ""
) -> PlannedTrial:
    """Validate one trial's flat configuration and plan its privacy spend.

    Raises ConfigError for values no run can use (δ ≥ 1/N, an unreachable target ε, …).
    """
    config = TrainConfig.from_dict(config_values, where=where)
    train_size = canonical_train_size(config.data.dataset, validation_fraction=config.data.validation_fraction)
    # Plan the full run without the in-trial budget stop: whether it may start at all is the
    # EpsilonBudget rule's decision, made on the whole planned spend.
    try:
        plan = plan_privacy(config.replace(epsilon_budget=None), train_size=train_size)
    except ConfigError as error:  # δ ≥ 1/N, batch > N, …: name the file to fix, as from_dict does
        raise ConfigError(f"{error} (in {where})" if where else str(error)) from None
    resolved = config.replace(noise_multiplier=plan.noise_multiplier) if plan.private else config
    flat = resolved.to_dict()
    return PlannedTrial(
        name=name, key=trial_key(flat, name=name), axis_values=dict(axis_values), train_config=flat, plan=plan
    )
