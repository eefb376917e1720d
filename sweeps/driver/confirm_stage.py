"""Running the confirmation stage and its refit on Ray (the decisions are :mod:`sweeps.results.confirm`'s)."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from dp_core.config import ConfigError, TrainConfig
from dp_core.dataset_facts import canonical_train_size
from dp_core.vectorized import group_signature
from sweeps.driver.progress import StageProgress, SweepProgress
from sweeps.planning import plan_trial
from sweeps.planning.keys import released_params, trial_key
from sweeps.privacy.ledger import LedgerEntry
from sweeps.protocol import ConfirmationJob, ConfirmationResult
from sweeps.results.confirm import (
    CONFIRMATIONS_FILE,
    Candidate,
    ConfirmationRun,
    confirmation_config,
    confirmation_jobs,
    keep_done,
    read_done,
    refit_config,
    refit_jobs,
    refit_run_name,
    run_name,
)
from sweeps.results.frontier import ConfirmedConfig
from sweeps.results.released_model import save_weights, weights_path
from sweeps.workers.confirmation import train_jobs
from sweeps.workers.own_data import shipped

__all__ = ["StageSetup", "calibrated_configs", "refit_configs", "run_confirmations", "run_refits"]


def _train_size(config: TrainConfig) -> int:
    return canonical_train_size(config.data.dataset, validation_fraction=config.data.validation_fraction)


def _ledger_entry(job: ConfirmationJob, *, role: str) -> LedgerEntry:
    """The mechanism a job runs: the trial's σ and sampling rate, for the steps up to its epoch."""
    config = TrainConfig.from_dict(job.train)
    train_size = _train_size(config)
    return LedgerEntry(
        key=trial_key(job.train, name=job.name),
        name=job.name,
        role=role,
        noise_multiplier=0.0 if config.privacy.disable_dp else float(config.privacy.noise_multiplier or 0.0),
        sample_rate=config.resolved_sample_rate(train_size),
        steps=config.steps_per_epoch(train_size) * job.epoch,
        train_config=released_params(job.train),
    )


def _units(jobs: Sequence[ConfirmationJob], slots: int) -> list[list[ConfirmationJob]]:
    """Jobs in at most ``slots`` units of work, each unit's jobs of one group that can train
    together (:func:`dp_core.vectorized.group_signature`; train_jobs checks the rest)."""
    groups: dict[tuple[Any, ...], list[ConfirmationJob]] = {}
    for job in jobs:
        config = TrainConfig.from_dict(job.train)
        groups.setdefault(group_signature(config, train_size=_train_size(config)), []).append(job)
    units = []
    for group in groups.values():
        size = max(1, math.ceil(len(group) / max(1, slots)))
        units += [group[i : i + size] for i in range(0, len(group), size)]
    return units


def _calibrated(values: Mapping[str, Any], *, name: str, what: str, bound: float) -> dict[str, Any] | None:
    """``values`` with σ calibrated to spend its target ε (planned like a trial: validated, PRV), or
    None, said so, if no σ holds it to the bound."""
    try:
        planned = plan_trial(dict(values), name=name, axis_values={})
    except ConfigError as error:  # e.g. the bound is below what one step spends
        print(
            f"  not {what} for ε ≤ {bound:g} (δ = {values.get('delta')}, "
            f"{str(values.get('accountant')).upper()} accountant): {error}",
            file=sys.stderr,
        )
        return None
    return released_params(planned.train_config)


def calibrated_configs(
    chosen: Sequence[Candidate],
    trial_configs: Mapping[str, Mapping[str, Any]],
) -> dict[tuple[str, int, float], dict[str, Any]]:
    """Each candidate's configuration as confirmed, σ calibrated to spend its bound. A candidate no σ
    can hold to its bound is left out, and said so."""
    configs = {}
    for candidate in chosen:
        config = _calibrated(
            confirmation_config(candidate, trial_configs[candidate.trial]),
            name=run_name(candidate, 0),
            bound=candidate.bound,
            what=f"confirming {candidate.trial} (epoch {candidate.epoch})",
        )
        if config is not None:
            configs[candidate.key] = config
    return configs


def refit_configs(chosen: Sequence[ConfirmedConfig]) -> dict[tuple[str, int, float], dict[str, Any]]:
    """Each chosen configuration as refit on the whole training split, σ calibrated again for its
    larger N to spend the same bound. One that can't be is left out (reported as confirmed), said so."""
    configs = {}
    for confirmed in chosen:
        assert confirmed.bound is not None
        config = _calibrated(
            refit_config(confirmed),
            name=refit_run_name(confirmed, 0),
            bound=confirmed.bound,
            what=f"refitting {confirmed.trial} (epoch {confirmed.epoch}) on train + validation",
        )
        if config is not None:
            configs[confirmed.key] = config
    return configs


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageSetup:
    """What both stages run with: the sweep's root seed (each run's seed derives from it), its
    privacy ledger and tracker, its folder (runs done, kept models), the Ray resources of one
    unit of runs and how many units train at once, and the display the stages report through
    (None: one of their own)."""

    root_seed: int
    ledger: Any
    tracker: Any
    sweep_dir: Path
    cpus_per_unit: float
    gpus_per_unit: float
    slots: int
    progress: SweepProgress | None = None


def run_confirmations(
    chosen: Sequence[Candidate],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
    *,
    seeds: int,
    setup: StageSetup,
) -> list[ConfirmationRun]:
    """Retrain every candidate ``seeds`` times (those not done before), log each run, return all.

    ``configs`` are the candidates' configurations from :func:`calibrated_configs`."""
    jobs = confirmation_jobs(chosen, configs, seeds=seeds, root_seed=setup.root_seed)
    return _run_jobs(jobs, stage="confirmation", doing=f"{len(chosen)} configuration(s)", seeds=seeds, setup=setup)


def run_refits(
    chosen: Sequence[ConfirmedConfig],
    configs: Mapping[tuple[str, int, float], Mapping[str, Any]],
    *,
    seeds: int,
    setup: StageSetup,
) -> list[ConfirmationRun]:
    """Refit every chosen configuration ``seeds`` times on train + validation (those not done
    before), log each run, return all. ``configs`` from :func:`refit_configs`."""
    jobs = refit_jobs([c for c in chosen if c.key in configs], configs, seeds=seeds, root_seed=setup.root_seed)
    doing = f"{len(chosen)} chosen configuration(s) on train + validation"
    return _run_jobs(jobs, stage="refit", doing=doing, seeds=seeds, setup=setup)


def _run_jobs(
    jobs: Sequence[ConfirmationJob], *, stage: str, doing: str, seeds: int, setup: StageSetup
) -> list[ConfirmationRun]:
    ledger, tracker, sweep_dir, progress = setup.ledger, setup.tracker, setup.sweep_dir, setup.progress
    done_file = sweep_dir / CONFIRMATIONS_FILE
    done = read_done(done_file)
    pending = [job for job in jobs if job.name not in done]
    by_name = {job.name: job for job in jobs}
    # Recorded before any runs: a launcher killed mid-stage still has them counted.
    ledger.record([_ledger_entry(job, role=stage) for job in pending])
    what, before = f"{doing} x {seeds} fresh seeds", len(jobs) - len(pending)
    if progress is not None:
        display = progress.stage(stage, runs=len(pending), done_before=before, what=what)
    else:
        display = StageProgress(stage=stage, runs=len(pending), done_before=before, what=what)
    display.start()
    try:
        _collect(
            by_name,
            done,
            done_file,
            display,
            stage=stage,
            tracker=tracker,
            units=_units(pending, setup.slots),
            own_data=shipped(),  # the sweep's own datasets, put into the object store once for every unit
            remote=ray.remote(num_cpus=setup.cpus_per_unit, num_gpus=setup.gpus_per_unit, max_retries=2)(train_jobs),
        )
    finally:
        display.close()
    run_ids = {}
    for job in jobs:
        run_ids[job.name] = tracker.run_id_of(trial_key(job.train, name=job.name))
    return [
        ConfirmationRun(**{**run.__dict__, "run_id": run.run_id or run_ids.get(run.name, "")})
        for name, run in done.items()
        if name in by_name
    ]


#: How often the stage wakes while its runs train, so that the display's plain line keeps its interval.
_TICK_SECONDS = 1.0


def _collect(
    by_name: Mapping[str, ConfirmationJob],
    done: dict[str, ConfirmationRun],
    done_file: Path,
    display: StageProgress,
    *,
    stage: str,
    tracker: Any,
    units: list[list[ConfirmationJob]],
    own_data: Any,
    remote: Any,
) -> None:
    """Run ``units`` on Ray, log and keep each run as its unit comes back, and show them on ``display``."""
    waiting = {remote.remote(unit, own_data): unit for unit in units}
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=_TICK_SECONDS)
        if not ready:
            display.tick()
            continue
        unit = waiting.pop(ready[0])
        try:
            rows = ray.get(ready[0])
        except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as error:
            print(f"  {stage} runs failed ({', '.join(job.name for job in unit)}): {error}", file=sys.stderr)
            rows = [ConfirmationResult.failed(job.name) for job in unit]
        runs = []
        for row in rows:
            job = by_name[row.name]
            run = ConfirmationRun(
                name=job.name,
                trial=job.trial,
                epoch=job.epoch,
                bound=job.bound,
                seed_index=job.seed_index,
                epsilon=row.epsilon,
                val_accuracy=row.val_accuracy,
                test_accuracy=row.test_accuracy,
                stage=stage,
            )
            measured = {
                "epsilon": row.epsilon,
                "val_accuracy": row.val_accuracy,
                "test_accuracy": row.test_accuracy,
                "test_accuracy_raw": row.test_accuracy_raw,  # NaN, so not logged, without parameter averaging
            }
            tracker.log_trial(
                key=trial_key(job.train, name=job.name),
                name=job.name,
                params={
                    **released_params(job.train),
                    "confirms_trial": job.trial,
                    "confirms_epoch": job.epoch,
                    "spends_epsilon": job.bound,
                },
                epochs=[(job.epoch, {k: v for k, v in measured.items() if math.isfinite(v)}, row.ended_ms)],
                outcome="completed" if run.ok else "failed",
                tags={"dpsweep.role": stage, "dpsweep.stage": stage, "dpsweep.confirms": job.trial},
                started_ms=row.started_ms,
                ended_ms=row.ended_ms,
            )
            runs.append(run)
            if row.model is not None:  # the bound's model (MODEL_SEED_INDEX): kept before the run counts as done
                save_weights(
                    weights_path(done_file.parent, job.name),  # the sweep folder
                    row.model,
                    train=job.train,
                    run_key=trial_key(job.train, name=job.name),
                )
        keep_done(done_file, runs)
        done.update({run.name: run for run in runs})
        failed = sum(not run.ok for run in runs)
        display.runs_ended(ok=len(runs) - failed, failed=failed)
