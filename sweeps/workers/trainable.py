"""The function Ray Tune runs for each trial, kept cheap to import.

Ray creates a trial's actor by unpickling this function, which imports its module. Importing
:mod:`sweeps.workers.trial` (torch, Opacus, the trainer) took 7 s on a loaded 2-core machine, longer
than a digits pack trains, and a fresh actor that slow lost its trial to a busy actor freeing
up (the actor-reuse pathology in :meth:`sweeps.driver.search.BudgetedOptunaSearch.suggest`, which
prevents the actor stop that starts it). From this module a fresh actor is ready in about 2 s;
the heavy imports run on the trial's first call, where they count as its set-up.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["run_trial", "RUNNERS"]

#: A unit's kind -> its runner, "module:function", called with (unit, tune_config). Imported on
#: the unit's first call, where torch's import counts as its set-up. A new kind of trial is a
#: planner in sweeps.planning.kinds, a runner module here and one line below.
RUNNERS: dict[str, str] = {
    "central": "sweeps.workers.trial:run_central_trial",
    "pack": "sweeps.workers.pack:run_pack",
    "federated": "sweeps.workers.federated:run_federated_trial",
}


def run_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable of every unit: decodes its spec and runs its kind's runner."""
    from sweeps.protocol import unit_of

    unit = unit_of(tune_config)
    module, _, name = RUNNERS[unit.kind].partition(":")
    getattr(importlib.import_module(module), name)(unit, tune_config)
