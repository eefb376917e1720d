"""A sweep after its trials: interrupted (kept for ``--resume``) or finished, with its runs closed,
confirmation stage, frontier, privacy statement, audit, tags and summary."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from dp_core.config import TrainConfig
from sweeps.driver.confirm_stage import (
    StageSetup,
    calibrated_configs,
    refit_configs,
    run_confirmations,
    run_refits,
)
from sweeps.driver.preparation import PreparedSweep, SweepRequest, sweep_filter
from sweeps.driver.register_models import register_models, register_selected_model
from sweeps.driver.runner import copy_from_checkpoint
from sweeps.driver.session import OpenSweep, SweepTrials
from sweeps.privacy.ledger import CONFIRMATION_ROLES
from sweeps.privacy.selection import sweep_privacy
from sweeps.privacy.statement import shared_seed_note
from sweeps.results.confirm import BASELINE, baseline_candidates, baseline_config, candidates, choose, refit
from sweeps.results.frontier import default_buckets
from sweeps.results.frontier_report import FrontierReport
from sweeps.results.released_model import selected_release
from sweeps.tracking.tags import frontier_tags, sweep_note
from sweeps.workers.trial import BEST_MODEL_FILE

__all__ = ["finish_sweep"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outcome:
    """What a finished sweep reports: its frontier, privacy statement, audit, trial counts and time."""

    report: FrontierReport
    privacy: Any  # SelectionPrivacy for kind: train, else None
    audit: Any
    outcomes: dict[str, int]
    orphans: int
    split: dict[str, float]
    frontier_dir: Path


def finish_sweep(
    request: SweepRequest,
    prepared: PreparedSweep,
    opened: OpenSweep,
    trials: SweepTrials,
    callback: Any,
    results: Any,
    *,
    slots: float,
    started: float,
) -> int:
    """Close the sweep after Ray Tune returned; the launcher's exit code (0, 3 MLflow away, 130 interrupted)."""
    tracker = opened.tracker
    if tracker.offline:
        tracker.flush()  # the server may be back by now
    unfinished = len(results) - results.num_terminated - results.num_errors
    if (unfinished or callback.interrupted) and not callback.time_budget_reached():
        return _leave_for_resume(request, prepared, opened, unfinished=unfinished)
    orphans = _close_open_runs(opened, ended_how="interrupted" if callback.time_budget_reached() else "failed")
    points = _sweep_points(request, opened, callback)
    confirm_started = time.monotonic()
    confirmed = _confirm(
        prepared.space,
        points,
        ledger=opened.ledger,
        tracker=tracker,
        sweep_dir=prepared.folder,
        slots=int(slots),
        progress=trials.progress,
    )
    confirm_seconds = time.monotonic() - confirm_started
    report = FrontierReport(
        points,
        budget=prepared.space.epsilon_budget,
        delta=prepared.delta,
        accountant=prepared.accountant,
        axis_keys=list(prepared.space.axes),
        confirmed=confirmed,
    )
    privacy, audit = _privacy_statement(request, prepared, opened, report)
    frontier_dir = prepared.folder / "frontier"
    for path in report.write(
        frontier_dir, title=prepared.space.name, extra_lines=privacy.plot_lines() if privacy else None
    ):
        tracker.log_artifact(str(path))
    searcher = trials.searcher
    split = {
        **callback.stats.split(slots=slots),
        "planning_seconds": prepared.planning_seconds + (searcher.planning_seconds if searcher else 0.0),
        "confirmation_seconds": confirm_seconds,
        "total_seconds": time.monotonic() - started,
    }
    outcomes = tracker.read_or(tracker.outcomes, lambda: dict(callback.outcomes, skipped_over_budget=trials.skipped))
    outcome = _Outcome(
        report=report,
        privacy=privacy,
        audit=audit,
        outcomes=outcomes,
        orphans=orphans,
        split=split,
        frontier_dir=frontier_dir,
    )
    _log_to_parent_run(prepared, opened, outcome, points=points)
    register_models(
        report,
        privacy,
        tracker=tracker,
        sweep_dir=prepared.folder,
        space_name=prepared.space.name,
        sweep_name=prepared.name,
    )
    best = report.best()
    if privacy is not None and privacy.sweep_epsilon is not None and best is not None:
        register_selected_model(
            best,
            privacy,
            trial=next((t for t in prepared.runnable or [] if t.name == best.trial), None),
            fetch=lambda to: copy_from_checkpoint(results, trial=best.trial, filename=BEST_MODEL_FILE, to=to),
            tracker=tracker,
            sweep_dir=prepared.folder,
            space_name=prepared.space.name,
        )
    if searcher is not None:
        # Again, now that the asker actor is surely gone: a suggestion it was asking when it was
        # stopped reached the study after run_trials had closed the searcher.
        searcher.fail_abandoned()
    tracker.end_sweep()
    _print_summary(prepared, opened, outcome, slots=slots, time_budget_reached=callback.time_budget_reached())
    if tracker.offline:
        print(
            f"\nMLflow at {opened.tracking_uri} could not be reached during the sweep. Training finished and "
            f"nothing is lost: the tracking writes are kept in {opened.journal}.\nWhen the server is back, run:\n"
            f"  python -m sweeps.sync {opened.journal}",
            file=sys.stderr,
        )
        return 3
    uri = opened.tracking_uri
    where = f"open {uri}" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    print(f"open the results: {where}  → experiment {request.experiment!r}, run {prepared.name}")
    return 0


def _leave_for_resume(request: SweepRequest, prepared: PreparedSweep, opened: OpenSweep, *, unfinished: int) -> int:
    """Interrupted (Ctrl-C, a lost driver): Tune's state stays for ``--resume``, no frontier yet."""
    tracker = opened.tracker
    if not tracker.offline:
        tracker.close_orphans(outcome="interrupted")
    tracker.log_sweep_tags({"dpsweep.state": "interrupted"})
    tracker.end_sweep(status="KILLED")
    print(
        f"\nsweep interrupted{f' with {unfinished} trial(s) unfinished' if unfinished else ''}; nothing finished "
        "is lost. Continue with:\n"
        f"  python -m sweeps.launch --space {request.space} --resume {prepared.name}",
        file=sys.stderr,
    )
    return 130


def _close_open_runs(opened: OpenSweep, *, ended_how: str) -> int:
    """Close the runs no trial will end: those left open by a process that died, and a run for each
    ledger trial that never logged; how many. Trials cut off by --time-budget are interrupted, not failed."""
    tracker = opened.tracker
    orphans = tracker.read_or(lambda: tracker.close_orphans(outcome=ended_how), lambda: 0)
    # A trial handed to a worker that died (with a killed launcher) before logging anything has
    # no child run yet; the ledger has it, and so does MLflow now, as the run it was.
    return orphans + tracker.read_or(lambda: _log_unlogged(tracker, opened.ledger, outcome=ended_how), lambda: 0)


def _sweep_points(request: SweepRequest, opened: OpenSweep, callback: Any) -> list[Any]:
    """The frontier is made of exactly the logged points. A new sweep whose writes all reached
    MLflow logged them from this process, so they are taken from here (reading thousands of
    metric histories back costs a request per trial); a resumed sweep reads MLflow,
    which also holds the points of the runs before; with MLflow away, what this process saw."""
    tracker = opened.tracker
    if request.resume is None and not tracker.offline:
        return callback.logged_points()
    return tracker.read_or(tracker.points, lambda: callback.points)


def _privacy_statement(
    request: SweepRequest, prepared: PreparedSweep, opened: OpenSweep, report: FrontierReport
) -> tuple[Any, Any]:
    """What releasing the selected model costs, the search included (sweeps.privacy.selection), and
    the audit's result if asked; (None, None) for federated sweeps (ε per client, in their runs)."""
    if prepared.space.kind != "train":
        return None, None
    ledger, space, delta = opened.ledger, prepared.space, prepared.delta
    best = report.best()
    audit = _audit_best(prepared.runnable or [], best, ledger=ledger) if request.audit and best is not None else None
    # Every run that touched the data, from the sweep's own ledger (not from MLflow): trials
    # that diverged or died before logging, earlier launches of a resumed sweep, the audit.
    ran = ledger.mechanisms()
    privacy = sweep_privacy(
        space,
        admitted=prepared.admitted if prepared.grid is not None else ran,
        trials_run=ran,
        delta=delta,
        adaptive=prepared.grid is None,
        sweep_filter=sweep_filter(space, delta),
    )
    entries = ledger.entries()
    return dataclasses.replace(
        privacy,
        audit_runs=sum(e.role == "audit" for e in entries),
        confirmation_runs=sum(e.role in CONFIRMATION_ROLES for e in entries),
    ), audit


def _log_to_parent_run(prepared: PreparedSweep, opened: OpenSweep, outcome: _Outcome, *, points: list[Any]) -> None:
    tracker, report, privacy = opened.tracker, outcome.report, outcome.privacy
    best = report.best()
    tracker.log_sweep_metrics(
        {
            **outcome.split,
            "frontier_points": len(report.front),
            "points": len(points),
            "best_val_accuracy": best.accuracy if best else float("nan"),
            "best_val_accuracy_epsilon": best.epsilon if best else float("nan"),
            **_confirmed_metrics(report),
        }
    )
    if privacy is not None:
        tracker.log_sweep_metrics(privacy.metrics())
    if outcome.audit is not None:
        tracker.log_sweep_metrics(outcome.audit.metrics())
    if privacy is not None and privacy.sweep_epsilon is not None and best is not None:
        tracker.log_artifact(str(_write_release(prepared.folder / "release", best, privacy)))
    tracker.log_sweep_tags({f"dpsweep.trials.{k}": v for k, v in outcome.outcomes.items()})
    # The frontier's runs findable among thousands (sweeps.tracking.tags), and the table on the parent's page.
    tracker.tag_runs(
        frontier_tags(
            report.front,
            report.buckets,
            confirmed_best=report.confirmed_best() if report.confirmed else None,
            run_of_trial={p.trial: p.run_id for p in points},
        )
    )
    space = prepared.space
    tracker.log_sweep_tags(
        {
            "mlflow.note.content": sweep_note(
                title=f"{prepared.name}: space {space.name}, ε budget {space.epsilon_budget} (δ = {prepared.delta:g}, "
                f"{prepared.accountant.upper()} accountant), {sum(outcome.outcomes.values())} trials",
                summary=report.summary(),
                details=[privacy.summary()] if privacy is not None else [],
            )
        }
    )


def _print_summary(
    prepared: PreparedSweep, opened: OpenSweep, outcome: _Outcome, *, slots: float, time_budget_reached: bool
) -> None:
    report, split = outcome.report, outcome.split
    print()
    print(report.summary())
    if outcome.privacy is not None:
        print("\n" + outcome.privacy.summary())
        shared_seeds = shared_seed_note(opened.ledger.entries())
        if shared_seeds is not None:
            print(shared_seeds)
    if outcome.audit is not None:
        print(outcome.audit.summary())
    left = "interrupted (time budget)" if time_budget_reached else "failed (their process died)"
    print(
        f"\ntrials: {', '.join(f'{k} {v}' for k, v in sorted(outcome.outcomes.items()))}"
        + (f"; {outcome.orphans} left running marked {left}" if outcome.orphans else "")
    )
    print(
        f"time: {split['total_seconds']:.1f} s in all; planning (σ calibration, per-epoch ε) "
        f"{split['planning_seconds']:.1f} s; trials {split['wall_seconds']:.1f} s on {slots:g} slots, of whose time "
        f"training {split['train_share']:.0%}, evaluation {split['eval_share']:.0%}, trial set-up "
        f"{split['setup_share']:.0%}, reporting/checkpoints {split['report_share']:.0%}, idle/scheduling "
        f"{split['idle_share']:.0%}; {split['trial_epochs_per_second']:.2f} trial-epochs/s"
        + (f"; confirmation {split['confirmation_seconds']:.1f} s" if report.confirmed else "")
    )
    print(f"frontier files: {outcome.frontier_dir}")


def _confirm(
    space: Any, points: list[Any], *, ledger: Any, tracker: Any, sweep_dir: Path, slots: int, progress: Any = None
) -> list[Any]:
    """The confirmation stage (sweeps.results.confirm): each ε bound's leading configurations, spending
    the bound, and the trainer's defaults beside them (unless baseline: false), retrained with fresh
    seeds; each bound's chosen on mean validation accuracy, then refit on train + validation (unless
    refit: false). [] when the space has none."""
    if space.confirm is None:
        return []
    buckets = default_buckets(space.epsilon_budget)
    # What each trial trained, from the ledger: it has every trial that ran, before and after a resume.
    trial_configs = {
        entry.name: entry.train_config
        for entry in ledger.entries()
        if entry.role == "trial" and entry.train_config is not None
    }
    chosen = [c for c in candidates(points, buckets, top=space.confirm.top) if c.trial in trial_configs]
    if space.confirm.baseline:
        defaults, why_not = baseline_config(space.fixed, space.axes)
        if defaults is None:
            print(f"  not confirming the trainer's defaults beside the nominees: {why_not}", file=sys.stderr)
        else:
            trial_configs[BASELINE] = space.trial_config(defaults)
            epochs = TrainConfig.from_dict(trial_configs[BASELINE]).epochs
            chosen += baseline_candidates(buckets, epochs=epochs)
    configs = calibrated_configs(chosen, trial_configs)
    chosen = [c for c in chosen if c.key in configs]
    if not chosen:
        return []
    setup = StageSetup(
        root_seed=space.seed,
        ledger=ledger,
        tracker=tracker,
        sweep_dir=sweep_dir,
        slots=slots,
        cpus_per_unit=space.cpus_per_trial,
        gpus_per_unit=space.gpus_per_trial,
        progress=progress,  # the search's display: the stages report through it
    )
    runs = run_confirmations(chosen, configs, seeds=space.confirm.seeds, setup=setup)
    confirmed = choose(chosen, runs, buckets, configs)
    if not space.confirm.refit:
        return confirmed
    winners = [c for c in confirmed if c.best_for]
    refits = refit_configs(winners)
    return refit(confirmed, run_refits(winners, refits, seeds=space.confirm.seeds, setup=setup), refits)


def _confirmed_metrics(report: Any) -> dict[str, float]:
    """Per ε bound, the confirmed configuration's test accuracy (mean, std) and ε, for the parent run."""
    metrics = {}
    for bound, chosen in report.confirmed_best():
        if chosen is not None:
            metrics[f"confirmed_test_accuracy_mean.eps_le_{bound:g}"] = chosen.test_mean
            metrics[f"confirmed_test_accuracy_std.eps_le_{bound:g}"] = chosen.test_std
            metrics[f"confirmed_epsilon.eps_le_{bound:g}"] = chosen.epsilon
    return {k: v for k, v in metrics.items() if v == v}  # no NaN (one seed: no std)


def _log_unlogged(tracker: Any, ledger: Any, *, outcome: str) -> int:
    """A child run for each trial in the ledger that MLflow has none of; returns how many."""
    logged = {run.data.tags.get("dpsweep.trial_key") for run in tracker.trial_runs()}
    missing = [entry for entry in ledger.entries() if entry.role == "trial" and entry.key not in logged]
    for entry in missing:
        tracker.log_trial(
            key=entry.key,
            name=entry.name,
            outcome=outcome,
            params={
                "noise_multiplier": entry.noise_multiplier,
                "sample_rate_resolved": entry.sample_rate,
                "steps_planned": entry.steps,
            },
            tags={
                "dpsweep.failure": "its worker stopped before it logged an epoch (the launcher died or the time "
                "budget ran out); it is counted in the sweep's privacy ledger"
            },
        )
    return len(missing)


def _write_release(folder: Path, best: Any, privacy: Any) -> Path:
    """``selected_model.json``: what a private-selection sweep releases, and nothing else
    (:func:`sweeps.results.released_model.selected_release`). Everything else stays with the team, in MLflow."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selected_model.json"
    path.write_text(json.dumps(selected_release(best, privacy), indent=2) + "\n")
    return path


def _audit_best(trials: list[Any], best: Any, *, ledger: Any) -> Any:
    """Retrain the best trial's configuration with canaries (dp_core.audit), in this process.

    A data-dependent extra training run: it draws fresh randomness (a new secret seed, not the
    trial's: the same seed would replay the trial's noise) and is recorded in the ledger, so the
    sweep's naive composition counts it.
    """
    from dp_core.audit import audit, audit_config
    from dp_core.config import TrainConfig
    from dp_core.data import load_data
    from dp_core.privacy_plan import plan_privacy
    from sweeps.planning.keys import trial_key
    from sweeps.privacy import sweep_secret
    from sweeps.privacy.ledger import LedgerEntry
    from sweeps.privacy.mechanism import TrialMechanism

    trial = next(t for t in trials if t.name == best.trial)
    print(f"auditing {trial.name} (retrained with canaries and a fresh seed) ...", flush=True)
    config = TrainConfig.from_dict({**trial.train_config, "seed": sweep_secret.draw()})
    data = load_data(config.data)
    canary_seed = sweep_secret.draw()
    audited, train_size = audit_config(config, data, canary_seed=canary_seed)
    mechanism = TrialMechanism.from_plan(plan_privacy(audited, train_size=train_size))
    name = f"audit_of_{trial.name}"
    ledger.record(
        [
            LedgerEntry(
                key=trial_key(trial.train_config, name=name),
                name=name,
                role="audit",
                noise_multiplier=mechanism.noise_multiplier,
                sample_rate=mechanism.sample_rate,
                steps=mechanism.steps,
            )
        ]
    )
    return audit(config, data=data, seed=canary_seed)
