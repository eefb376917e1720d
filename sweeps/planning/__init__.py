"""Planning trials before they run: resolved σ, planned ε, the ε-budget admission rule, packs.

Planning is pure (no Ray, no MLflow): a trial's privacy spend is a function of its
configuration, so whether it may run is decided before any compute is spent on it.
"""

from sweeps.planning.grid import plan_grid
from sweeps.planning.kinds import plan_trial, trial_kind
from sweeps.planning.trials import EpsilonBudget, PlannedTrial

__all__ = ["PlannedTrial", "EpsilonBudget", "plan_trial", "plan_grid", "trial_kind"]
