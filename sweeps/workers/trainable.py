"""The function Ray Tune runs for each trial, kept cheap to import.

Ray creates a trial's actor by unpickling this function, which imports its module. Importing
:mod:`sweeps.workers.trial` (torch, Opacus, the trainer) took longer than a digits pack trains,
and a fresh actor that slow lost its trial to a busy actor freeing up (the actor-reuse pathology
in :meth:`sweeps.driver.search.BudgetedOptunaSearch.suggest`, which prevents the actor stop that
starts it). From this module a fresh actor is ready several times sooner (``docs/benchmarks.md``);
the heavy imports run on the trial's first call, where they count as its set-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dp_core.registry import Registry

__all__ = ["run_trial", "RUNNERS"]

#: A unit's kind -> its runner, called with (unit, tune_config). Registered as references, imported
#: on the unit's first call, where torch's import counts as its set-up. A new kind of trial is a
#: planner in sweeps.planning.kinds and a runner registered here.
RUNNERS = Registry("kind", references=True)
RUNNERS.register("central", "sweeps.workers.trial:run_central_trial")
RUNNERS.register("pack", "sweeps.workers.pack:run_pack")
RUNNERS.register("federated", "sweeps.workers.federated:run_federated_trial")


def run_trial(tune_config: dict[str, Any], own_data: Sequence[Any] = ()) -> None:
    """Ray Tune function trainable of every unit: decodes its spec and runs its kind's runner.

    ``own_data``: the sweep's own datasets, from Ray's object store (``tune.with_parameters``), kept for
    ``dp_core``'s loaders in this worker (:mod:`sweeps.workers.own_data`).
    """
    from sweeps.protocol import unit_of

    if own_data:
        from sweeps.workers.own_data import receive

        receive(own_data)
    unit = unit_of(tune_config)
    RUNNERS.get(unit.kind)(unit, tune_config)
