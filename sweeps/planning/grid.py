"""Planning a whole grid at once, distinct privacy mechanisms in parallel processes."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sweeps.planning.kinds import plan_trial
from sweeps.planning.trials import PlannedTrial

__all__ = ["plan_grid"]


_MECHANISM_KEYS = (
    "dataset",
    "noise_multiplier",
    "target_epsilon",
    "batch_size",
    "sample_rate",
    "epochs",
    "delta",
    "accountant",
    "disable_dp",
)


def _plan_group(jobs: list[tuple[dict[str, Any], str, dict[str, Any], str]]) -> list[PlannedTrial]:
    return [
        plan_trial(values, name=name, axis_values=axis_values, where=where) for values, name, axis_values, where in jobs
    ]


def plan_grid(space: Any, *, workers: int | None = None) -> list[PlannedTrial]:
    """Plan every grid point, in grid order, spreading distinct privacy mechanisms over processes.

    Trials that differ only in C or the learning rate share one mechanism (σ, q, steps, δ), whose
    ε curve is computed once per process (cached); distinct mechanisms are independent PRV
    computations, long enough to be worth running in parallel.
    """
    groups: dict[str, list[tuple[int, tuple[dict[str, Any], str, dict[str, Any], str]]]] = {}
    for index, values in enumerate(space.grid_axis_values()):
        config = space.trial_config(values, number=index)
        mechanism = json.dumps({k: config.get(k) for k in _MECHANISM_KEYS}, sort_keys=True, default=str)
        groups.setdefault(mechanism, []).append((index, (config, f"trial_{index:04d}", values, str(space.source))))
    workers = min(workers or os.cpu_count() or 1, len(groups))
    batches = [[job for _, job in group] for group in groups.values()]
    if workers <= 1:
        planned_groups = [_plan_group(batch) for batch in batches]
    else:
        # fork: the children inherit the imported modules; they run only numpy/scipy accounting.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            planned_groups = list(pool.map(_plan_group, batches))
    order = [index for group in groups.values() for index, _ in group]
    planned = [trial for group in planned_groups for trial in group]
    return [trial for _, trial in sorted(zip(order, planned), key=lambda pair: pair[0])]
