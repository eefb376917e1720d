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

Beside the nominees, each bound confirms the **trainer's defaults** (``confirm: {baseline: true}``,
the default): the space's fixed values with every searched key at dp_core's default, spending the
bound, under the candidate name ``defaults``. It competes like any nominee, so a sweep reports a
tuned configuration only where one validated better than not tuning; and the report shows both.
It is left out where a default lies outside its axis (then it is not a point of the space).

Then each bound's chosen configuration is **refit** (``confirm: {refit: true}``, the default): trained
``seeds`` times more, with other fresh seeds, on the whole training split, validation examples
included, with σ calibrated again so that a run on the larger N still spends the bound exactly.
That is how a tuned configuration is used once chosen (the validation split has done its work),
what a user who retrains ``train_config`` runs, and what the trainer's defaults are measured on;
the reported test accuracy is these runs' mean ± std. The choice itself is not revisited.

Every confirmation and refit run trains on the data, so each is recorded in the privacy ledger
before it starts (role ``confirmation`` or ``refit``) and counted by the sweep's naive composition. Runs already done
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

from dp_core.config import TrainConfig
from sweeps.protocol import ConfirmationJob
from sweeps.results.frontier import ConfirmedConfig, Point
from sweeps.space.model import Axis, Range

__all__ = [
    "BASELINE",
    "CONFIRMATIONS_FILE",
    "MODEL_SEED_INDEX",
    "Candidate",
    "ConfirmationRun",
    "baseline_candidates",
    "baseline_config",
    "candidates",
    "choose",
    "confirmation_config",
    "confirmation_jobs",
    "refit",
    "refit_config",
    "refit_jobs",
]

CONFIRMATIONS_FILE = "confirmations.jsonl"
#: The candidate name of the trainer's defaults, confirmed beside the search's nominees.
BASELINE = "defaults"
#: Searched keys the bound itself sets in every confirmation (σ is calibrated to spend it).
_PRIVACY_KEYS = ("noise_multiplier", "target_epsilon")
#: The sweep secret's stream for confirmation seeds (sweeps.privacy.sweep_secret.derived_seed).
CONFIRM_STREAM = 2**40 + 3
#: … and for the refit runs' seeds: fresh against the search and the confirmation runs.
REFIT_STREAM = 2**40 + 4
#: Which refit run of a bound becomes its registered model (sweeps.results.released_model): the
#: first, a rule fixed before any refit run is evaluated, never a choice by its results.
MODEL_SEED_INDEX = 0
#: What a refit trains on, as ConfirmedConfig.trained_on says it.
TRAIN_AND_VALIDATION = "train+validation"


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
    stage: str = "confirmation"  # or "refit": trained on train + validation, so no validation accuracy

    @property
    def key(self) -> tuple[str, int, float]:
        """The candidate (Candidate.key) or chosen configuration (ConfirmedConfig.key) it trains."""
        return (self.trial, self.epoch, self.bound)

    @property
    def ok(self) -> bool:
        measured = math.isfinite(self.test_accuracy)
        return measured if self.stage == "refit" else measured and math.isfinite(self.val_accuracy)


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
            chosen.setdefault(
                (p.trial, p.epoch, bound),
                Candidate(
                    trial=p.trial,
                    epoch=p.epoch,
                    epsilon=p.epsilon,
                    val_accuracy=p.accuracy,
                    bound=bound,
                    params=dict(p.params),
                ),
            )
    return list(chosen.values())


def baseline_config(fixed: Mapping[str, Any], axes: Mapping[str, Axis]) -> tuple[dict[str, Any] | None, str]:
    """The space's untuned point: ``fixed`` with every searched key at dp_core's default (σ and the
    target ε are the bound's to set), as axis values; or None and why, if a default lies outside
    its axis (a list that does not hold it, a range that does not span it)."""
    defaults = TrainConfig.from_dict({k: v for k, v in fixed.items() if k not in axes}).to_dict()
    values = {}
    for key, axis in axes.items():
        if key in _PRIVACY_KEYS:
            continue
        default = defaults.get(key)
        inside = (
            (isinstance(default, (int, float)) and not isinstance(default, bool) and axis.low <= default <= axis.high)
            if isinstance(axis, Range)
            else default in axis
        )
        if not inside:
            return None, f"the default {key} = {default!r} is not on its axis"
        values[key] = default
    return values, ""


def baseline_candidates(buckets: Sequence[float], *, epochs: int) -> list[Candidate]:
    """The trainer's defaults as a candidate for every bound, trained for ``epochs`` epochs."""
    return [
        Candidate(trial=BASELINE, epoch=epochs, epsilon=math.nan, val_accuracy=math.nan, bound=bound)
        for bound in buckets
    ]


def run_name(candidate: Candidate, seed_index: int) -> str:
    return _run_name("confirm", candidate.trial, candidate.epoch, candidate.bound, seed_index)


def _run_name(stage: str, trial: str, epoch: int, bound: float, seed_index: int) -> str:
    return f"{stage}_{trial}_epoch{epoch}_eps{bound:g}_seed{seed_index + 1}"


def confirmation_config(candidate: Candidate, trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat configuration a candidate is confirmed as (σ still to be calibrated, no seed): the
    trial's, for ``epoch`` epochs, with the bound as its target ε."""
    config = {k: v for k, v in trial_config.items() if k != "seed"}
    return {**config, "epochs": candidate.epoch, "target_epsilon": candidate.bound, "noise_multiplier": None}


def confirmation_jobs(
    chosen: Sequence[Candidate],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
    *,
    seeds: int,
    root_seed: int,
) -> list[ConfirmationJob]:
    """One job per (candidate, seed): its run name, flat configuration with a fresh seed, and epochs.

    ``configs`` maps each candidate's key to the flat configuration it is confirmed as, σ
    calibrated (:func:`confirmation_config`, planned by the driver). The seeds come from the
    sweep's secret, the trial's name, the bound, the epoch and the run's index: fresh against
    the search (another stream) and between candidates, the same again on ``--resume``.
    """
    return _seeded_jobs(
        [(c.trial, c.epoch, c.bound) for c in chosen],
        configs,
        stage="confirm",
        stream=CONFIRM_STREAM,
        seeds=seeds,
        root_seed=root_seed,
    )


def _seeded_jobs(
    keys: Sequence[tuple[str, int, float]],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
    *,
    stage: str,
    stream: int,
    seeds: int,
    root_seed: int,
) -> list[ConfirmationJob]:
    """``seeds`` jobs per (trial, epoch, bound) key, named after ``stage``, each its configuration with
    a seed from the sweep's secret, ``stream``, the trial's name, the bound, the epoch and the index."""
    from sweeps.privacy.sweep_secret import derived_seed

    jobs = []
    for trial, epoch, bound in keys:
        word = int(hashlib.sha256(f"{trial}@{bound!r}".encode()).hexdigest()[:12], 16)
        for index in range(seeds):
            seed = derived_seed(root_seed, stream, word, epoch, index)
            jobs.append(
                ConfirmationJob(
                    name=_run_name(stage, trial, epoch, bound, index),
                    trial=trial,
                    epoch=epoch,
                    bound=bound,
                    seed_index=index,
                    train={**configs[(trial, epoch, bound)], "seed": seed},
                )
            )
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


def choose(
    chosen: Sequence[Candidate],
    runs: Iterable[ConfirmationRun],
    buckets: Sequence[float],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
) -> list[ConfirmedConfig]:
    """Each candidate's confirmed figures, and for each ε bound, among its candidates, the one with
    the best mean validation accuracy (ties: lower ε); ``best_for`` lists the bound it was chosen for.
    ``configs`` are the candidates' flat configurations as confirmed (their params in the report).

    A run that diverged counts against its configuration as accuracy 0 (its model is useless)
    rather than being dropped, so that instability never flatters a mean. Test accuracy is only
    averaged here, never compared.
    """
    by_candidate: dict[tuple[str, int, float], list[ConfirmationRun]] = {}
    for run in runs:
        by_candidate.setdefault(run.key, []).append(run)
    summaries: list[tuple[Candidate, dict[str, Any]]] = []
    for candidate in chosen:
        own = sorted(by_candidate.get(candidate.key, []), key=lambda r: r.seed_index)
        ok = [r for r in own if r.ok]
        if not ok:
            continue
        val_mean, val_std = _mean_std([r.val_accuracy if r.ok else 0.0 for r in own])
        test_mean, test_std = _mean_std([r.test_accuracy if r.ok else 0.0 for r in own])
        summaries.append(
            (
                candidate,
                {
                    "epsilon": max(r.epsilon for r in ok),
                    "val_mean": val_mean,
                    "val_std": val_std,
                    "test_mean": test_mean,
                    "test_std": test_std,
                    "seeds": len(own),
                    "run_ids": tuple(r.run_id for r in own if r.run_id),
                },
            )
        )
    best_for: dict[tuple[str, int, float], list[float]] = {}
    for bound in buckets:
        eligible = [(c, s) for c, s in summaries if c.bound == bound and s["epsilon"] <= bound]
        if eligible:
            winner, _ = max(eligible, key=lambda cs: (cs[1]["val_mean"], -cs[1]["epsilon"]))
            best_for.setdefault(winner.key, []).append(bound)
    return [
        ConfirmedConfig(
            trial=c.trial,
            epoch=c.epoch,
            bound=c.bound,
            search_val_accuracy=c.val_accuracy,
            params=dict(configs[c.key]),
            best_for=tuple(best_for.get(c.key, ())),
            **s,
        )
        for c, s in summaries
    ]


def refit_run_name(confirmed: ConfirmedConfig, seed_index: int) -> str:
    assert confirmed.bound is not None
    return _run_name("refit", confirmed.trial, confirmed.epoch, confirmed.bound, seed_index)


def refit_config(confirmed: ConfirmedConfig) -> dict[str, Any]:
    """The flat configuration a chosen configuration is refit as (σ still to be calibrated, no seed):
    the confirmed one, on the whole training split, its bound as the target ε."""
    return {**confirmed.params, "validation_fraction": 0.0, "target_epsilon": confirmed.bound, "noise_multiplier": None}


def refit_jobs(
    chosen: Sequence[ConfirmedConfig],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
    *,
    seeds: int,
    root_seed: int,
) -> list[ConfirmationJob]:
    """One job per (chosen configuration, seed), ``configs`` mapping each one's key (trial, epoch,
    bound) to its refit configuration, σ calibrated. Seeds from the sweep's secret, REFIT_STREAM.
    The job of seed index MODEL_SEED_INDEX keeps its model (``keep_model``): it is the bound's model."""
    keys = [(c.trial, c.epoch, float(c.bound)) for c in chosen if c.bound is not None]
    jobs = _seeded_jobs(keys, configs, stage="refit", stream=REFIT_STREAM, seeds=seeds, root_seed=root_seed)
    return [dataclasses.replace(job, keep_model=job.seed_index == MODEL_SEED_INDEX) for job in jobs]


def refit(
    confirmed: Sequence[ConfirmedConfig],
    runs: Iterable[ConfirmationRun],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
) -> list[ConfirmedConfig]:
    """``confirmed`` with each chosen configuration that has refit runs reporting them: their test
    accuracy (mean ± std; a diverged run counts as 0), ε, seeds and configuration, its run ids
    added. What chose it (validation figures, ``best_for``) is kept; the others are unchanged."""
    by_key: dict[tuple[str, int, float], list[ConfirmationRun]] = {}
    for run in runs:
        if run.stage == "refit":
            by_key.setdefault(run.key, []).append(run)
    out = []
    for c in confirmed:
        own = sorted(by_key.get(c.key, []), key=lambda r: r.seed_index) if c.best_for else []
        ok = [r for r in own if r.ok]
        if not ok or c.key not in configs:
            out.append(c)
            continue
        test_mean, test_std = _mean_std([r.test_accuracy if r.ok else 0.0 for r in own])
        out.append(
            dataclasses.replace(
                c,
                epsilon=max(r.epsilon for r in ok),
                test_mean=test_mean,
                test_std=test_std,
                seeds=len(own),
                params=dict(configs[c.key]),
                run_ids=c.run_ids + tuple(r.run_id for r in own if r.run_id),
                trained_on=TRAIN_AND_VALIDATION,
            )
        )
    return out
