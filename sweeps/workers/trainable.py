"""The function Ray Tune runs for each trial, kept cheap to import.

Ray creates a trial's actor by unpickling this function, which imports its module. Importing
:mod:`sweeps.workers.trial` (torch, Opacus, the trainer) took 7 s on a loaded 2-core machine, longer
than a digits pack trains, and a fresh actor that slow lost its trial to a busy actor freeing
up (the actor-reuse pathology in :meth:`sweeps.driver.search.BudgetedOptunaSearch.suggest`, which
prevents the actor stop that starts it). From this module a fresh actor is ready in about 2 s;
the heavy imports run on the trial's first call, where they count as its set-up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_trial"]


def run_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: see :func:`sweeps.workers.trial.run_trial`."""
    from sweeps.workers.trial import run_trial as run

    run(tune_config)
