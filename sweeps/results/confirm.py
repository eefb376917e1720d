"""The confirmation stage: each ε bucket's leading configurations, retrained with fresh seeds.

A search's best point is the maximum over thousands of noisy runs, each measured once: on
digits at ε = 1 one configuration's accuracy ranges over five points across seeds, so the
maximum overstates what its configuration does, and more so the more trials ran. The search
therefore only nominates: for every ε bound, the ``top`` trials whose best point within the
bound has the highest validation accuracy. Each nominee is trained again ``seeds`` times with
seeds drawn from the sweep's secret, as the configuration that spends the bound: its
hyperparameters, for as many epochs as its nominated point had trained, with σ calibrated so
that the run's ε is the bound (a search point within a bound is usually a run of a larger
budget stopped early, which leaves part of the bound unspent). Every bound's configuration is
chosen by *mean* validation accuracy over those runs. Only then is the test split read, to
report the chosen configurations' test accuracy as mean ± std over the same runs; no decision
reads it.

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

__all__ = ["CONFIRMATIONS_FILE", "Candidate", "ConfirmationRun", "candidates", "choose", "confirmation_config",
           "confirmation_jobs"]

CONFIRMATIONS_FILE = "confirmations.jsonl"
#: The sweep secret's stream for confirmation seeds (sweeps.privacy.sweep_secret.derived_seed).
CONFIRM_STREAM = 2**40 + 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A search point nominated for the ε bound ``bound``: trial ``trial``'s point after ``epoch``.

    It is confirmed as trial ``trial``'s configuration trained for ``epoch`` epochs at the σ that
    spends ``bound`` (see :func:`confirmation_config`).
    """

    trial: str
    epoch: int
    epsilon: float
    val_accuracy: float
    bound: float
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, float]:
        return (self.trial, self.epoch, self.bound)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfirmationRun:
    """One retraining of a candidate with a fresh seed, as measured after its last epoch."""

    name: str
    trial: str
    epoch: int
    bound: float
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

    A trial is nominated at its best epoch within the bound (ties: the earlier epoch); a trial
    nominated for two bounds is two candidates (each spends its own bound). In bound order.
    """
    usable = [p for p in points if math.isfinite(p.epsilon) and not math.isnan(p.accuracy)]
    chosen: dict[tuple[str, int, float], Candidate] = {}
    for bound in buckets:
        best_of_trial: dict[str, Point] = {}
        for p in usable:
            if p.epsilon <= bound:
                held = best_of_trial.get(p.trial)
                if held is None or (p.accuracy, -p.epoch) > (held.accuracy, -held.epoch):
                    best_of_trial[p.trial] = p
        leaders = sorted(best_of_trial.values(), key=lambda p: (-p.accuracy, p.epsilon, p.trial))[:top]
        for p in leaders:
            chosen.setdefault((p.trial, p.epoch, bound), Candidate(
                trial=p.trial, epoch=p.epoch, epsilon=p.epsilon, val_accuracy=p.accuracy, bound=bound,
                params=dict(p.params)))
    return list(chosen.values())


def run_name(candidate: Candidate, seed_index: int) -> str:
    return f"confirm_{candidate.trial}_epoch{candidate.epoch}_eps{candidate.bound:g}_seed{seed_index + 1}"


def confirmation_config(candidate: Candidate, trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat configuration a candidate is confirmed as (σ still to be calibrated, no seed): the
    trial's, for ``epoch`` epochs, with the bound as its target ε."""
    config = {k: v for k, v in trial_config.items() if k != "seed"}
    return {**config, "epochs": candidate.epoch, "target_epsilon": candidate.bound, "noise_multiplier": None}


def confirmation_jobs(chosen: Sequence[Candidate], configs: Mapping[tuple[str, int, float], Mapping[str, Any]], *,
                      seeds: int, root_seed: int) -> list[ConfirmationJob]:
    """One job per (candidate, seed): its run name, flat configuration with a fresh seed, and epochs.

    ``configs`` maps each candidate's key to the flat configuration it is confirmed as, σ
    calibrated (:func:`confirmation_config`, planned by the driver). The seeds come from the
    sweep's secret, the trial's name, the bound, the epoch and the run's index: fresh against
    the search (another stream) and between candidates, the same again on ``--resume``.
    """
    from sweeps.privacy.sweep_secret import derived_seed

    jobs = []
    for candidate in chosen:
        word = int(hashlib.sha256(f"{candidate.trial}@{candidate.bound!r}".encode()).hexdigest()[:12], 16)
        for index in range(seeds):
            seed = derived_seed(root_seed, CONFIRM_STREAM, word, candidate.epoch, index)
            jobs.append(ConfirmationJob(name=run_name(candidate, index), trial=candidate.trial, epoch=candidate.epoch,
                                        bound=candidate.bound, seed_index=index,
                                        train={**configs[candidate.key], "seed": seed}))
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


def choose(chosen: Sequence[Candidate], runs: Iterable[ConfirmationRun], buckets: Sequence[float],
           configs: Mapping[tuple[str, int, float], Mapping[str, Any]]) -> list[ConfirmedConfig]:
    """Each candidate's confirmed figures, and for each ε bound, among its candidates, the one with
    the best mean validation accuracy (ties: lower ε); ``best_for`` lists the bound it was chosen for.
    ``configs`` are the candidates' flat configurations as confirmed (their params in the report).

    A run that diverged counts against its configuration as accuracy 0 (its model is useless)
    rather than being dropped, so that instability never flatters a mean. Test accuracy is only
    averaged here, never compared.
    """
    by_candidate: dict[tuple[str, int, float], list[ConfirmationRun]] = {}
    for run in runs:
        by_candidate.setdefault((run.trial, run.epoch, run.bound), []).append(run)
    summaries: list[tuple[Candidate, dict[str, Any]]] = []
    for candidate in chosen:
        own = sorted(by_candidate.get(candidate.key, []), key=lambda r: r.seed_index)
        ok = [r for r in own if r.ok]
        if not ok:
            continue
        val_mean, val_std = _mean_std([r.val_accuracy if r.ok else 0.0 for r in own])
        test_mean, test_std = _mean_std([r.test_accuracy if r.ok else 0.0 for r in own])
        summaries.append((candidate, {
            "epsilon": max(r.epsilon for r in ok), "val_mean": val_mean, "val_std": val_std, "test_mean": test_mean,
            "test_std": test_std, "seeds": len(own), "run_ids": tuple(r.run_id for r in own if r.run_id)}))
    best_for: dict[tuple[str, int, float], list[float]] = {}
    for bound in buckets:
        eligible = [(c, s) for c, s in summaries if c.bound == bound and s["epsilon"] <= bound]
        if eligible:
            winner, _ = max(eligible, key=lambda cs: (cs[1]["val_mean"], -cs[1]["epsilon"]))
            best_for.setdefault(winner.key, []).append(bound)
    return [
        ConfirmedConfig(trial=c.trial, epoch=c.epoch, bound=c.bound, search_val_accuracy=c.val_accuracy,
                        params=dict(configs[c.key]), best_for=tuple(best_for.get(c.key, ())), **s)
        for c, s in summaries
    ]
