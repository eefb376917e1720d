"""The function Ray Tune runs for each trial, kept cheap to import.

Ray creates a trial's actor by unpickling this function, which imports its module. Importing
:mod:`sweeps.trial` (torch, Opacus, the trainer) takes 5–7 s on a loaded 2-core machine, longer
than a digits pack trains. When Tune has to start a fresh actor (one was stopped while no
trial was waiting for it), it gives the waiting trial to whichever actor is free first and
stops the other: with a slow-starting fresh actor, the busy one was always free first, the
fresh one was stopped each time, and one slot stayed idle to the end of the sweep (seen in a
300 s benchmark run: four actors started and stopped in a row). Started from this module, a
fresh actor is ready in about a second and takes its trial; the heavy imports run on the
trial's first call, where they count as its set-up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_trial"]


def run_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: see :func:`sweeps.trial.run_trial`."""
    from sweeps.trial import run_trial as run

    run(tune_config)
