"""Asking Optuna and planning what it suggests, ahead of Ray Tune's requests, in two Ray actors.

TPE's ask takes tens of milliseconds and planning a configuration's privacy up to seconds; in
the driver they held Tune's control loop. The actors work batches ahead; the searcher
(:mod:`sweeps.driver.search`) hands out what they planned. Both open the sweep's study from its
journal file, so every ask is in the one study the driver tells.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from dp_core.config import ConfigError
from sweeps.driver.batch_tpe import BatchTPESampler
from sweeps.planning import PlannedTrial
from sweeps.privacy.sweep_secret import SAMPLER, derived_seed
from sweeps.space import Range, SearchSpace

__all__ = ["journal_storage", "Asked", "Asker", "Planner", "sampler_seed", "new_sampler", "ask_batch", "plan_asked"]


def journal_storage(path: str | Path) -> optuna.storages.JournalStorage:
    """The Optuna storage of a sweep's study: an append-only journal file (``optuna.load_study``
    reads it back with this same storage)."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _suggest(trial: optuna.Trial, key: str, axis: Any) -> Any:
    if isinstance(axis, Range):
        if axis.integer:
            return trial.suggest_int(key, int(axis.low), int(axis.high), log=axis.log)
        return trial.suggest_float(key, axis.low, axis.high, log=axis.log)
    return trial.suggest_categorical(key, list(axis))


@dataclasses.dataclass(frozen=True)
class Asked:
    """One configuration asked of Optuna and planned: ``planned`` None with ``error`` saying why
    it cannot be planned (e.g. a target ε no σ reaches)."""

    number: int  # the Optuna trial's number
    trial_id: int  # its id in the study's storage (what optuna.Trial is made from)
    values: dict[str, Any]  # the axis values
    name: str
    planned: PlannedTrial | None
    error: str | None
    plan_seconds: float


def sampler_seed(space: SearchSpace, stream: int) -> int | None:
    """The sampler's seed: from the sweep's root seed (secret unless the space sets one)."""
    return None if space.seed is None else derived_seed(space.seed, SAMPLER, stream) % 2**32  # numpy's legacy seeding


def new_sampler(space: SearchSpace, *, seed: int | None) -> optuna.samplers.BaseSampler:
    if space.objective == "multi":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return BatchTPESampler(seed=seed)


def ask_batch(study: optuna.Study, space: SearchSpace, count: int) -> list[tuple[int, int, dict[str, Any], str]]:
    """Ask ``study`` for ``count`` configurations of ``space``: (number, trial id, axis values, name).

    With TPE, the batch shares one fit of the sampler's model (see :mod:`sweeps.driver.batch_tpe`).
    """
    out = []
    sampler = study.sampler
    with sampler.one_fit() if isinstance(sampler, BatchTPESampler) else contextlib.nullcontext():
        for _ in range(count):
            trial = study.ask()
            values = {key: _suggest(trial, key, axis) for key, axis in space.axes.items()}
            out.append((trial.number, trial._trial_id, values, f"trial_{trial.number:04d}"))
    return out


def plan_asked(
    study: optuna.Study,
    space: SearchSpace,
    plan: Callable[[dict[str, Any], str], PlannedTrial],
    asked: list[tuple[int, int, dict[str, Any], str]],
) -> list[Asked]:
    """Plan each asked configuration's privacy spend; its planned ε goes to its Optuna trial."""
    out = []
    for number, trial_id, values, name in asked:
        started = time.monotonic()
        try:
            planned, error = plan(space.trial_config(values, number=number), name), None
        except ConfigError as failure:  # e.g. a target ε no σ reaches; a bug in planning is raised, not skipped
            planned, error = None, str(failure)
        seconds = time.monotonic() - started
        if planned is not None:
            optuna.trial.Trial(study, trial_id).set_user_attr("planned_epsilon", planned.planned_epsilon)
        out.append(Asked(number, trial_id, values, name, planned, error, seconds))
    return out


class Asker:
    """Asks Optuna for configurations in a Ray actor on the driver's machine (the study's
    journal file is there): TPE's suggestions in a study of thousands of trials (even fitted once
    per pack, :mod:`sweeps.driver.batch_tpe`) held Tune's control loop when they ran in the
    driver, so packs waited to report and to start. Its study is the driver's, through
    the journal: it sees every result the driver tells."""

    def __init__(self, space: SearchSpace, storage: str, study_name: str, seed: int | None) -> None:
        self.space = space
        self.study = optuna.load_study(
            study_name=study_name, storage=journal_storage(storage), sampler=new_sampler(space, seed=seed)
        )

    def ask(self, count: int) -> list[tuple[int, int, dict[str, Any], str]]:
        return ask_batch(self.study, self.space, count)


class Planner:
    """Plans asked configurations in a Ray actor, beside the asker (the two work in parallel,
    batch after batch), in one process for the whole sweep, so its σ and ε caches stay warm."""

    def __init__(
        self, space: SearchSpace, storage: str, study_name: str, plan: Callable[[dict[str, Any], str], PlannedTrial]
    ) -> None:
        self.space, self.plan = space, plan
        self.study = optuna.load_study(study_name=study_name, storage=journal_storage(storage))

    def plan_batch(self, asked: list[tuple[int, int, dict[str, Any], str]]) -> list[Asked]:
        return plan_asked(self.study, self.space, self.plan, asked)
