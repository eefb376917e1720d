"""Planning trials before they run: resolved σ, planned ε, the ε-budget admission rule, packs.

Planning is pure (no Ray, no MLflow): a trial's privacy spend is a function of its
configuration, so whether it may run is decided before any compute is spent on it.

Modules: ``trials`` (what planning produces), ``kinds`` (the trial kinds' registry, ``PLANNERS``)
with ``central`` and ``federated`` (their planners), ``grid`` (a whole grid at once), ``keys`` (a
trial's identity), ``packing`` (trials trained at once), ``pruning`` (the pruning rules).
"""

from sweeps.planning.grid import plan_grid
from sweeps.planning.kinds import PLANNERS, plan_trial, trial_kind
from sweeps.planning.trials import EpsilonBudget, PlannedTrial

__all__ = [
    "PLANNERS",
    "EpsilonBudget",
    "PlannedTrial",
    "plan_grid",
    "plan_trial",
    "trial_kind",
    "central",
    "federated",
    "grid",
    "keys",
    "kinds",
    "packing",
    "pruning",
    "trials",
]
