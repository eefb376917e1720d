"""The confirmation stage: each ε bucket's leading configurations, retrained with fresh seeds.

A search's best point is the maximum over thousands of noisy runs, each measured once: on
digits at ε = 1 one configuration's accuracy ranges over five points across seeds, so the
maximum overstates what its configuration does, and more so the more trials ran. The search
therefore only nominates: for every ε bound, the ``top`` trials whose best point within the
bound has the highest validation accuracy. Each nominee (its configuration, trained up to that
point's epoch of its own schedule) is trained again ``seeds`` times with seeds drawn from the
sweep's secret, and every bucket's configuration is chosen by *mean* validation accuracy over
those runs. Only then is the test split read, to report the chosen configurations' test
accuracy as mean ± std over the same runs; no decision reads it.

Every confirmation run trains on the data, so each is recorded in the privacy ledger before it
starts (role ``confirmation``) and counted by the sweep's naive composition. Runs already done
(``confirmations.jsonl`` in the sweep folder) are not run again on ``--resume``; a run that
was recorded but not finished is run again with the same seed, so the same mechanism.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.protocol import ConfirmationJob
from sweeps.results.frontier import ConfirmedConfig, Point

__all__ = ["CONFIRMATIONS_FILE", "Candidate", "ConfirmationRun", "candidates", "choose", "confirmation_jobs"]

CONFIRMATIONS_FILE = "confirmations.jsonl"
#: The sweep secret's stream for confirmation seeds (sweeps.privacy.sweep_secret.derived_seed).
CONFIRM_STREAM = 2**40 + 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A search point nominated for confirmation: trial ``trial``'s configuration up to ``epoch``."""

    trial: str
    epoch: int
    epsilon: float
    val_accuracy: float
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfirmationRun:
    """One retraining of a candidate with a fresh seed, as measured at the candidate's epoch."""

    name: str
    trial: str
    epoch: int
    seed_index: int
    epsilon: float
    val_accuracy: float
    test_accuracy: float
    run_id: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.val_accuracy) and math.isfinite(self.test_accuracy)


def candidates(points: Iterable[Point], buckets: Sequence[float], *, top: int) -> list[Candidate]:
    """For each ε bound, the ``top`` trials with the most accurate point (validation) within it.

    A trial is nominated at its best epoch within the bound (ties: the earlier epoch), so one
    trial may be nominated at two epochs for two bounds. The union, in order of first nomination.
    """
    usable = [p for p in points if math.isfinite(p.epsilon) and not math.isnan(p.accuracy)]
    chosen: dict[tuple[str, int], Candidate] = {}
    for bound in buckets:
        best_of_trial: dict[str, Point] = {}
        for p in usable:
            if p.epsilon <= bound:
                held = best_of_trial.get(p.trial)
                if held is None or (p.accuracy, -p.epoch) > (held.accuracy, -held.epoch):
                    best_of_trial[p.trial] = p
        leaders = sorted(best_of_trial.values(), key=lambda p: (-p.accuracy, p.epsilon, p.trial))[:top]
        for p in leaders:
            chosen.setdefault((p.trial, p.epoch), Candidate(trial=p.trial, epoch=p.epoch, epsilon=p.epsilon,
                                                            val_accuracy=p.accuracy, params=dict(p.params)))
    return list(chosen.values())


def run_name(candidate: Candidate, seed_index: int) -> str:
    return f"confirm_{candidate.trial}_epoch{candidate.epoch}_seed{seed_index + 1}"


def confirmation_jobs(chosen: Sequence[Candidate], configs: Mapping[str, Mapping[str, Any]], *, seeds: int,
                      root_seed: int) -> list[ConfirmationJob]:
    """One job per (candidate, seed): its run name, flat configuration with a fresh seed, and stop epoch.

    ``configs`` maps each trial name to the flat configuration it ran (σ resolved, no seed). The
    seeds come from the sweep's secret, the trial's name, the epoch and the run's index: fresh
    against the search (another stream), the same again on ``--resume``.
    """
    from sweeps.privacy.sweep_secret import derived_seed

    jobs = []
    for candidate in chosen:
        trial_word = int(hashlib.sha256(candidate.trial.encode()).hexdigest()[:12], 16)
        for index in range(seeds):
            seed = derived_seed(root_seed, CONFIRM_STREAM, trial_word, candidate.epoch, index)
            jobs.append(ConfirmationJob(name=run_name(candidate, index), trial=candidate.trial, epoch=candidate.epoch,
                                        seed_index=index, train={**configs[candidate.trial], "seed": seed}))
    return jobs


def read_done(path: Path) -> dict[str, ConfirmationRun]:
    """The confirmation runs finished before (by name), from the sweep's ``confirmations.jsonl``."""
    done: dict[str, ConfirmationRun] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                run = ConfirmationRun(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line torn by a killed launcher: its run is simply run again
            done[run.name] = run
    return done


def keep_done(path: Path, runs: Iterable[ConfirmationRun]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        handle.write("".join(json.dumps(dataclasses.asdict(run)) + "\n" for run in runs))
        handle.flush()
        os.fsync(handle.fileno())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def choose(chosen: Sequence[Candidate], runs: Iterable[ConfirmationRun], buckets: Sequence[float]) -> list[ConfirmedConfig]:
    """Each candidate's confirmed figures, and for each ε bound the candidate with the best mean
    validation accuracy within it (ties: lower ε); ``best_for`` lists the bounds each was chosen for.

    A run that diverged counts against its configuration as accuracy 0 (its model is useless)
    rather than being dropped, so that instability never flatters a mean. Test accuracy is only
    averaged here, never compared.
    """
    by_candidate: dict[tuple[str, int], list[ConfirmationRun]] = {}
    for run in runs:
        by_candidate.setdefault((run.trial, run.epoch), []).append(run)
    summaries: list[tuple[Candidate, dict[str, Any]]] = []
    for candidate in chosen:
        own = sorted(by_candidate.get((candidate.trial, candidate.epoch), []), key=lambda r: r.seed_index)
        ok = [r for r in own if r.ok]
        if not ok:
            continue
        val_mean, val_std = _mean_std([r.val_accuracy if r.ok else 0.0 for r in own])
        test_mean, test_std = _mean_std([r.test_accuracy if r.ok else 0.0 for r in own])
        summaries.append((candidate, {
            "epsilon": max(r.epsilon for r in ok), "val_mean": val_mean, "val_std": val_std, "test_mean": test_mean,
            "test_std": test_std, "seeds": len(own), "run_ids": tuple(r.run_id for r in own if r.run_id)}))
    best_for: dict[tuple[str, int], list[float]] = {}
    for bound in buckets:
        eligible = [(c, s) for c, s in summaries if s["epsilon"] <= bound]
        if eligible:
            winner, _ = max(eligible, key=lambda cs: (cs[1]["val_mean"], -cs[1]["epsilon"]))
            best_for.setdefault((winner.trial, winner.epoch), []).append(bound)
    return [
        ConfirmedConfig(trial=c.trial, epoch=c.epoch, search_val_accuracy=c.val_accuracy, params=c.params,
                        best_for=tuple(best_for.get((c.trial, c.epoch), ())), **s)
        for c, s in summaries
    ]
