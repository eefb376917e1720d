"""dpsweep's sweeps: search spaces, Ray Tune orchestration, Optuna search, MLflow tracking.

Every sub-package's ``__init__.py`` is its public surface, written one way: ``__all__`` lists the
names it re-exports, then its public modules. A package re-exports only from modules no heavier
to import than its lightest entry point, so that importing it never costs more than that entry:
``sweeps.workers`` is imported by every fresh trial actor of Ray (no torch: only ``trainable``'s
names), ``sweeps.driver`` by ``python -m sweeps.submit`` (no torch, Ray, Optuna or MLflow: no
names). Names of the other public modules are imported from their module
(``from sweeps.driver.runner import run_trials``).
"""

__all__ = [
    "bench",
    "driver",
    "launch",
    "planning",
    "privacy",
    "protocol",
    "registry",
    "results",
    "space",
    "submit",
    "sync",
    "tracking",
    "workers",
]
