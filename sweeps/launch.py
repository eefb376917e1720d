"""``python -m sweeps.launch --space NAME``: run a DP-SGD sweep and leave its frontier in MLflow.

Order of work: load and validate the space, plan every trial's privacy spend (bad input stops
here, before Ray or MLflow is touched), open the MLflow parent run, record over-budget trials as
skipped, run the rest on Ray Tune, then compute the accuracy-vs-ε frontier from what MLflow
holds and attach it (CSV, PNG, per-bucket best) to the parent run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from dp_core.config import ConfigError

__all__ = ["main"]


def _versions() -> dict[str, str]:
    names = ("torch", "opacus", "ray", "optuna", "mlflow", "dpsweep")
    found = {}
    for name in names:
        try:
            found[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[f"version.{name}"] = "not installed"
    found["python"] = platform.python_version()
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--space", help="a shipped space name (see --list) or a path to a .yaml file")
    parser.add_argument("--list", action="store_true", help="list the shipped search spaces and exit")
    parser.add_argument("--search", choices=("grid", "optuna"), help="override the space's search mode")
    parser.add_argument("--trials", type=int, help="override the number of Optuna trials")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="stop starting and running trials after this many seconds (Ray Tune time_budget_s)")
    parser.add_argument("--address", help="Ray cluster address (default: start local Ray)")
    parser.add_argument("--resources", metavar="cpus=N,gpus=M",
                        help="override the space's resources per trial, e.g. cpus=2,gpus=0 (CPU only)")
    parser.add_argument("--wait-for-resources", type=float, default=0.0, metavar="SECONDS",
                        help="on an autoscaling cluster (--address, or a Ray Job): wait up to this long for a node that "
                             "can hold one trial (default 0: fail at once, exit 2)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's own default, "
                        "sqlite:///mlflow.db); a server's account comes from MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD")
    parser.add_argument("--experiment", default="dpsweep", help="MLflow experiment name (default: dpsweep)")
    parser.add_argument("--results-dir", type=Path, default=Path("dpsweep_results"),
                        help="where Ray Tune keeps trial state and checkpoints (default: ./dpsweep_results)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="SWEEP",
                        help="continue an interrupted sweep (the latest of this space, or a sweep folder name)")
    parser.add_argument("--audit", action="store_true",
                        help="after the sweep, retrain the best trial with canaries and log an empirical ε lower "
                             "bound next to its theoretical ε (grid sweeps of kind: train)")
    parser.add_argument("--verbose", action="store_true",
                        help="one line per trial and per skipped trial, and Ray's, MLflow's and Optuna's own "
                             "start-up output (default: a live progress display, or a summary line every 30 s "
                             "without a terminal)")
    return parser


def _list_spaces() -> int:
    from sweeps.space import list_spaces

    for space in list_spaces():
        print(f"{space.name:<18} {space.search:<7} {space.description}")
    return 0


def _sweep_name(space_name: str, results_dir: Path, resume: str | None) -> str:
    if resume is None:
        return f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume != "latest":
        if not (results_dir / resume).is_dir():
            raise ConfigError(f"Expected --resume to name a sweep folder in {results_dir}, but got {resume!r}.")
        return resume
    # A sweep folder is one Ray Tune can restore from (it holds Tune's experiment state).
    earlier = sorted(p.name for p in results_dir.glob(f"{space_name}-*")
                     if p.is_dir() and any(p.glob("experiment_state*.json")))
    if not earlier:
        raise ConfigError(f"Expected an earlier sweep of space {space_name!r} in {results_dir} to resume, but found none.")
    return earlier[-1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return _list_spaces()
    if not args.space:
        print("error: give --space NAME (or --list to see the shipped spaces)", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    launched = time.monotonic()
    from sweeps.driver import prepare_data
    from sweeps.privacy import sweep_secret
    from sweeps.planning import EpsilonBudget, plan_grid
    from sweeps.driver.resources import with_resources
    from sweeps.space import load_space

    # Everything the sweep writes (Tune's state with the trials' seeds, the secret, the ledger,
    # Ray's session files) is for its owner only.
    os.umask(0o077)
    space = load_space(args.space)
    if args.search or args.trials:
        space = space.with_overrides(search=args.search, trials=args.trials)
    if args.resources:
        space = with_resources(space, args.resources)
    # Trials never download: this process fetches and verifies the data once, before any starts.
    download = prepare_data.downloads_wanted(space)
    space = prepare_data.without_downloads(space)
    if space.kind == "federated":  # its planning reads the training labels
        prepare_data.prepare_here(prepare_data.datasets_of(space), root=space.fixed.get("data_root"), download=download)
    results_dir = args.results_dir.resolve()
    sweep_name = _sweep_name(space.name, results_dir, args.resume)
    sweep_dir = results_dir / sweep_name
    # The root of every random choice: the one an earlier launch kept, or a new secret (kept once
    # planning has passed). A space that sets seed: keeps its own, public one.
    kept_root = sweep_secret.read(sweep_dir) if args.resume else None
    space = space.with_secret_seed(kept_root if kept_root is not None else sweep_secret.draw())
    budget = EpsilonBudget(space.epsilon_budget)
    # Plan before touching Ray or MLflow: any bad value fails here with nothing created.
    planning_started = time.monotonic()
    grid = plan_grid(space) if space.search == "grid" else None
    planning_seconds = time.monotonic() - planning_started
    runnable = [t for t in grid if budget.rejects(t) is None] if grid is not None else None
    over_budget = [t for t in grid if budget.rejects(t) is not None] if grid is not None else []
    if grid is not None and not runnable:
        cheapest = min(grid, key=lambda t: t.planned_epsilon)
        raise ConfigError(
            f"Expected epsilon_budget to admit at least one trial, but got epsilon_budget={space.epsilon_budget} "
            f"in {space.source}: the cheapest trial ({dict(cheapest.axis_values)}) plans "
            f"ε = {cheapest.planned_epsilon:.3f} (δ = {cheapest.plan.delta:g}, "
            f"{cheapest.plan.accountant.upper()} accountant). Raise the budget or the noise."
        )
    admitted = runnable
    if grid is not None and space.private_selection is not None:
        from sweeps.privacy.selection import select_trials

        if args.time_budget is not None:
            raise ConfigError(
                f"Expected no --time-budget with private_selection (in {space.source}), but got --time-budget "
                f"{args.time_budget:g}: trials not started by the deadline would cut the drawn trial count short, "
                "and the guarantee is for K drawn from the distribution, not a truncated one."
            )
        runnable = select_trials(space, admitted)  # K ~ private_selection, drawn before anything runs
    if args.audit and (grid is None or space.kind != "train"):
        raise ConfigError(
            f"Expected a grid sweep of kind: train with --audit (it retrains the best planned trial), but got "
            f"search={space.search!r}, kind={space.kind!r} in {space.source}."
        )

    from sweeps.tracking import default_tracking_uri  # imports MLflow (quiet_libraries comes after)

    from sweeps.driver.progress import SweepProgress, quiet_libraries

    if not args.verbose:
        quiet_libraries()  # before Ray starts and MLflow opens its store
    from sweeps.driver import runner
    from sweeps.privacy.ledger import LEDGER_FILE, PrivacyLedger
    from sweeps.planning import plan_trial
    from sweeps.results.report import FrontierReport
    from sweeps.tracking.tags import frontier_tags, sweep_note
    from sweeps.driver.search import BudgetedOptunaSearch
    from sweeps.tracking import SweepTracker, TrackingRefused, TrackingUnavailable

    tracking_uri = args.tracking_uri or default_tracking_uri()
    # A cluster that can never hold a trial, or data that cannot be had, stops the sweep before any
    # trial: with a local store before MLflow too, so nothing is created. A tracking server signs the
    # sweep in first (a refused account stops it before Ray starts); its parent run is then closed.
    cluster_first = not tracking_uri.startswith(("http://", "https://"))
    if cluster_first:
        runner.connect_ray(args.address)
        _ready_cluster(space, args, download=download)
    journal = results_dir / f"{sweep_name}-mlflow-journal.jsonl"
    tracker = SweepTracker(tracking_uri=tracking_uri, experiment=args.experiment, journal=journal)
    first = grid[0].plan if grid else None
    delta = first.delta if first else float(space.fixed.get("delta", 1e-5))
    accountant = first.accountant if first else str(space.fixed.get("accountant", "prv"))
    try:
        tracker.start_sweep(
            sweep_id=sweep_name, run_name=sweep_name,
            params={"space": space.name, "space_file": str(space.source), "search": space.search,
                    "objective": space.objective, "pruner": space.pruner, "epsilon_budget": space.epsilon_budget,
                    "delta": delta, "accountant": accountant, "trials": space.trials,
                    **{f"fixed.{k}": v for k, v in space.fixed.items()}, **_versions()},
            tags={"dpsweep.space": space.name},
        )
    except TrackingUnavailable as error:
        raise ConfigError(f"{error}. Start the tracking server or pass another --tracking-uri.") from None
    except TrackingRefused as error:  # before Ray starts: nothing has run
        raise ConfigError(str(error)) from None
    if not cluster_first:
        try:
            runner.connect_ray(args.address)
            _ready_cluster(space, args, download=download)
        except ConfigError as error:
            tracker.log_sweep_tags({"dpsweep.state": "failed", "dpsweep.failure": str(error)[:4000]})
            tracker.end_sweep(status="FAILED")
            raise
    if not space.public_seed:
        sweep_secret.keep(sweep_dir, space.seed)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(sweep_dir / LEDGER_FILE)
    print(f"sweep {sweep_name}: space {space.name} ({space.search}), ε budget {space.epsilon_budget} "
          f"(δ = {delta:g}, {accountant.upper()} accountant); MLflow {tracking_uri}, "
          f"experiment {args.experiment!r}, parent run {tracker.parent_run_id}", flush=True)
    if space.public_seed:
        print(f"note: {PUBLIC_SEED_CAVEAT}", flush=True)
        tracker.log_sweep_tags({"dpsweep.privacy_caveat": PUBLIC_SEED_CAVEAT})

    skipped = 0
    # Trials by outcome, time, best so far per ε bound (sweeps.driver.progress). No total with private
    # selection: the number of trials run is K, which is not shown.
    progress = SweepProgress(total=None if space.private_selection is not None else len(grid) if grid else space.trials,
                             epsilon_budget=space.epsilon_budget, time_budget_s=args.time_budget, verbose=args.verbose)

    def on_skip(planned: Any, values: dict[str, Any], reason: str) -> None:
        nonlocal skipped
        skipped += 1
        if planned is not None:
            tracker.log_skipped(key=planned.key, name=planned.name, params=planned.params(),
                                planned_epsilon=planned.planned_epsilon, reason=reason)
        # A configuration that could not be planned at all is shown in any case: its reason is an error.
        progress.skipped(name=planned.name if planned is not None else values.get("name", "?"), reason=reason,
                         show=planned is None)

    searcher = None
    if grid is not None:
        for trial in over_budget:
            on_skip(trial, dict(trial.axis_values), budget.rejects(trial) or "")
        to_run = "K drawn" if space.private_selection is not None else str(len(runnable))
        names = ", ".join(t.name for t in over_budget[:8]) + (", …" if len(over_budget) > 8 else "")
        print(f"{len(grid)} grid points: {to_run} to run, {skipped} skipped over budget"
              + (f" ({names})" if over_budget and not args.verbose else ""), flush=True)
        if space.private_selection is not None:
            # Not K: the sweep ε holds only while K is unknown (sweeps.privacy.selection).
            print(f"private selection: drew the trial count K ~ {space.private_selection.distribution} (mean "
                  f"{space.private_selection.mean:g}) and each trial uniformly from the {len(admitted)} admitted "
                  "grid points, with its own secret seed; K is not shown", flush=True)
    else:
        results_dir.mkdir(parents=True, exist_ok=True)
        searcher = BudgetedOptunaSearch(
            space, storage=results_dir / f"{sweep_name}-optuna.journal", study_name=sweep_name,
            plan=lambda values, name: plan_trial(values, name=name, axis_values={
                k: values[k] for k in space.axes}, where=str(space.source)),
            on_skip=on_skip, ledger=ledger, sweep_filter=_sweep_filter(space, delta),
        )

    runner.connect_ray(args.address)
    slots = _slots(space)
    callback, results = runner.run_trials(space, tracker=tracker, storage_path=results_dir, name=sweep_name,
                                          grid=runnable, searcher=searcher, resume=args.resume is not None,
                                          slots=int(slots), time_budget_s=args.time_budget, ledger=ledger,
                                          progress=progress)
    stats = callback.stats
    if tracker.offline:
        tracker.flush()  # the server may be back by now
    online = not tracker.offline
    unfinished = len(results) - results.num_terminated - results.num_errors
    if (unfinished or callback.interrupted) and not callback.time_budget_reached():
        # Interrupted (Ctrl-C, a lost driver): leave the state for --resume, no frontier yet.
        if online:
            tracker.close_orphans(outcome="interrupted")
        tracker.log_sweep_tags({"dpsweep.state": "interrupted"})
        tracker.end_sweep(status="KILLED")
        print(f"\nsweep interrupted{f' with {unfinished} trial(s) unfinished' if unfinished else ''}; nothing finished "
              "is lost. Continue with:\n"
              f"  python -m sweeps.launch --space {args.space} --resume {sweep_name}", file=sys.stderr)
        return 130
    # Trials cut off by --time-budget are interrupted, not failed; otherwise a run left open died with its process.
    ended_how = "interrupted" if callback.time_budget_reached() else "failed"
    orphans = tracker.read_or(lambda: tracker.close_orphans(outcome=ended_how), lambda: 0)
    # A trial handed to a worker that died (with a killed launcher) before logging anything has
    # no child run yet; the ledger has it, and so does MLflow now, as the run it was.
    orphans += tracker.read_or(lambda: _log_unlogged(tracker, ledger, outcome=ended_how), lambda: 0)

    # The frontier is made of exactly the logged points. A new sweep whose writes all reached
    # MLflow logged them from this process, so they are taken from here (reading thousands of
    # metric histories back took seconds per thousand trials); a resumed sweep reads MLflow,
    # which also holds the points of the runs before; with MLflow away, what this process saw.
    if args.resume is None and not tracker.offline:
        points = callback.logged_points()
    else:
        points = tracker.read_or(tracker.points, lambda: callback.points)
    confirm_started = time.monotonic()
    confirmed = _confirm(space, points, ledger=ledger, tracker=tracker, sweep_dir=sweep_dir, slots=int(slots))
    confirm_seconds = time.monotonic() - confirm_started
    report = FrontierReport(points, budget=space.epsilon_budget, delta=delta, accountant=accountant,
                            axis_keys=list(space.axes), confirmed=confirmed)
    frontier_dir = results_dir / sweep_name / "frontier"
    # What releasing the selected model costs, the search included (sweeps.privacy.selection).
    selection_privacy = None
    audit_result = None
    if space.kind == "train":
        from sweeps.privacy.report import shared_seed_note
        from sweeps.privacy.selection import sweep_privacy

        best = report.best()
        if args.audit and best is not None:
            audit_result = _audit_best(runnable, best, ledger=ledger)
        # Every run that touched the data, from the sweep's own ledger (not from MLflow): trials
        # that diverged or died before logging, earlier launches of a resumed sweep, the audit.
        ran = ledger.mechanisms()
        selection_privacy = sweep_privacy(
            space, admitted=admitted if grid is not None else ran, trials_run=ran, delta=delta,
            adaptive=grid is None, sweep_filter=_sweep_filter(space, delta))
        selection_privacy = dataclasses.replace(
            selection_privacy, audit_runs=sum(entry.role == "audit" for entry in ledger.entries()),
            confirmation_runs=sum(entry.role == "confirmation" for entry in ledger.entries()))
    for path in report.write(frontier_dir, title=space.name,
                             extra_lines=selection_privacy.plot_lines() if selection_privacy else None):
        tracker.log_artifact(str(path))

    split = {**stats.split(slots=slots), "planning_seconds": planning_seconds + (searcher.planning_seconds if searcher else 0.0),
             "confirmation_seconds": confirm_seconds, "total_seconds": time.monotonic() - launched}
    best = report.best()
    tracker.log_sweep_metrics({**split, "frontier_points": len(report.front), "points": len(points),
                               "best_val_accuracy": best.accuracy if best else float("nan"),
                               "best_val_accuracy_epsilon": best.epsilon if best else float("nan"),
                               **_confirmed_metrics(report)})
    if selection_privacy is not None:
        tracker.log_sweep_metrics(selection_privacy.metrics())
    if audit_result is not None:
        tracker.log_sweep_metrics(audit_result.metrics())
    if selection_privacy is not None and selection_privacy.sweep_epsilon is not None and best is not None:
        tracker.log_artifact(str(_write_release(sweep_dir / "release", best, selection_privacy)))
    outcomes = tracker.read_or(tracker.outcomes, lambda: dict(callback.outcomes, skipped_over_budget=skipped))
    tracker.log_sweep_tags({f"dpsweep.trials.{k}": v for k, v in outcomes.items()})
    # The frontier's runs findable among thousands (sweeps.tracking.tags), and the table on the parent's page.
    tracker.tag_runs(frontier_tags(report.front, report.buckets,
                                   confirmed_best=report.confirmed_best() if report.confirmed else None,
                                   run_of_trial={p.trial: p.run_id for p in points}))
    tracker.log_sweep_tags({"mlflow.note.content": sweep_note(
        title=f"{sweep_name}: space {space.name}, ε budget {space.epsilon_budget} (δ = {delta:g}, "
              f"{accountant.upper()} accountant), {sum(outcomes.values())} trials",
        summary=report.summary(), details=[selection_privacy.summary()] if selection_privacy is not None else [])})
    if searcher is not None:
        # Again, now that the asker actor is surely gone: a suggestion it was asking when it was
        # stopped reached the study after run_trials had closed the searcher.
        searcher.fail_abandoned()
    tracker.end_sweep()

    print()
    print(report.summary())
    if selection_privacy is not None:
        print("\n" + selection_privacy.summary())
        shared_seeds = shared_seed_note(ledger.entries())
        if shared_seeds is not None:
            print(shared_seeds)
    if audit_result is not None:
        print(audit_result.summary())
    print(f"\ntrials: {', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}"
          + (f"; {orphans} left running marked {'interrupted (time budget)' if callback.time_budget_reached() else 'failed (their process died)'}"
             if orphans else ""))
    print(f"time: {split['total_seconds']:.1f} s in all; planning (σ calibration, per-epoch ε) "
          f"{split['planning_seconds']:.1f} s; trials {split['wall_seconds']:.1f} s on {slots:g} slots, of whose time "
          f"training {split['train_share']:.0%}, evaluation {split['eval_share']:.0%}, trial set-up "
          f"{split['setup_share']:.0%}, reporting/checkpoints {split['report_share']:.0%}, idle/scheduling "
          f"{split['idle_share']:.0%}; {split['trial_epochs_per_second']:.2f} trial-epochs/s"
          + (f"; confirmation {split['confirmation_seconds']:.1f} s" if report.confirmed else ""))
    print(f"frontier files: {frontier_dir}")
    if tracker.offline:
        print(f"\nMLflow at {tracking_uri} could not be reached during the sweep. Training finished and "
              f"nothing is lost: the tracking writes are kept in {journal}.\nWhen the server is back, run:\n"
              f"  python -m sweeps.sync {journal}", file=sys.stderr)
        return 3
    where = (f"open {tracking_uri}" if tracking_uri.startswith(("http://", "https://"))
             else f"mlflow ui --backend-store-uri {tracking_uri}")
    print(f"open the results: {where}  → experiment {args.experiment!r}, run {sweep_name}")
    return 0


PUBLIC_SEED_CAVEAT = (
    "this space fixes its randomness (seed:, fixed.seed or a seed axis): a reproducible research run. Every ε "
    "printed and logged holds only against someone who does not know that seed; whoever has the space file can "
    "regenerate each trial's noise. Remove the seeds for a secret seed drawn per sweep."
)


def _confirm(space: Any, points: list[Any], *, ledger: Any, tracker: Any, sweep_dir: Path, slots: int) -> list[Any]:
    """The confirmation stage (sweeps.results.confirm): each ε bound's leading configurations retrained
    with fresh seeds, each bound's chosen on mean validation accuracy. [] when the space has none."""
    if space.confirm is None:
        return []
    from sweeps.results.confirm import candidates, choose
    from sweeps.driver.confirm_stage import run_confirmations
    from sweeps.results.frontier import default_buckets

    buckets = default_buckets(space.epsilon_budget)
    # What each trial trained, from the ledger: it has every trial that ran, before and after a resume.
    configs = {entry.name: entry.train_config for entry in ledger.entries()
               if entry.role == "trial" and entry.train_config is not None}
    chosen = [c for c in candidates(points, buckets, top=space.confirm.top) if c.trial in configs]
    if not chosen:
        return []
    runs = run_confirmations(chosen, configs, seeds=space.confirm.seeds, root_seed=space.seed, ledger=ledger,
                             tracker=tracker, sweep_dir=sweep_dir, cpus_per_unit=space.cpus_per_trial,
                             gpus_per_unit=space.gpus_per_trial, slots=slots)
    return choose(chosen, runs, buckets)


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
            key=entry.key, name=entry.name, outcome=outcome,
            params={"noise_multiplier": entry.noise_multiplier, "sample_rate_resolved": entry.sample_rate,
                    "steps_planned": entry.steps},
            tags={"dpsweep.failure": "its worker stopped before it logged an epoch (the launcher died or the time "
                                     "budget ran out); it is counted in the sweep's privacy ledger"})
    return len(missing)


def _write_release(folder: Path, best: Any, privacy: Any) -> Path:
    """``selected_model.json``: what a private-selection sweep releases, and nothing else.

    The selected configuration, its score and the sweep ε that covers them. Not K, not the
    seed, not the other trials: knowing K voids the sweep ε (sweeps.privacy.selection), and the rest is
    covered only by naive composition. Everything else stays with the team, in MLflow.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selected_model.json"
    hyperparameters = {k.removeprefix("axis."): v for k, v in best.params.items() if k.startswith("axis.")}
    path.write_text(json.dumps({
        "hyperparameters": hyperparameters, "epoch": best.epoch, "val_accuracy": best.accuracy,
        "sweep_epsilon": privacy.sweep_epsilon, "delta": privacy.delta, "accountant": privacy.accountant,
        "guarantee": f"best of K ~ {privacy.distribution} (mean {privacy.mean:g}) random trials, Papernot & Steinke 2022",
    }, indent=2) + "\n")
    return path


def _sweep_filter(space: Any, delta: float) -> Any:
    """The RDP filter of an Optuna sweep with sweep_epsilon_budget (sweeps.privacy.adaptive), else None."""
    if space.sweep_epsilon_budget is None:
        return None
    from sweeps.privacy.adaptive import RdpFilter

    try:
        return RdpFilter.for_budget(epsilon=space.sweep_epsilon_budget, delta=delta)
    except ValueError as error:
        raise ConfigError(f"{error} (in {space.source})") from None


def _audit_best(trials: list[Any], best: Any, *, ledger: Any) -> Any:
    """Retrain the best trial's configuration with canaries (dp_core.audit), in this process.

    A data-dependent extra training run: it draws fresh randomness (a new secret seed, not the
    trial's: the same seed would replay the trial's noise) and is recorded in the ledger, so the
    sweep's naive composition counts it.
    """
    from dp_core.audit import audit, audit_config
    from dp_core.config import TrainConfig
    from dp_core.data import load_data
    from dp_core.plan import plan_privacy
    from sweeps.privacy import sweep_secret
    from sweeps.planning.keys import trial_key
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
    ledger.record([LedgerEntry(key=trial_key(trial.train_config, name=name), name=name, role="audit",
                               noise_multiplier=mechanism.noise_multiplier, sample_rate=mechanism.sample_rate,
                               steps=mechanism.steps)])
    return audit(config, data=data, seed=canary_seed)


def _ready_cluster(space: Any, args: argparse.Namespace, *, download: bool) -> None:
    """Exit 2 (ConfigError) unless a trial fits the cluster (sweeps.driver.resources), then prepare the data
    (sweeps.driver.prepare_data): here on local Ray, once per node on a cluster."""
    from sweeps.driver import prepare_data
    from sweeps.driver.resources import TrialResources, require_fit

    if args.wait_for_resources < 0:
        raise ConfigError(f"Expected --wait-for-resources >= 0, but got --wait-for-resources {args.wait_for_resources:g}.")
    where = f"--resources {args.resources}" if args.resources else f"resources: in {space.source}"
    # A Ray Job's driver attaches to its cluster through RAY_ADDRESS, without --address.
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    require_fit(TrialResources(cpus=space.cpus_per_trial, gpus=space.gpus_per_trial), where=where,
                address=address, wait_seconds=args.wait_for_resources, spread=space.kind == "federated")
    names, root = prepare_data.datasets_of(space), space.fixed.get("data_root")
    if address is not None:
        prepare_data.prepare_on_nodes(names, root=root, download=download)
    elif space.kind != "federated":  # a federated space's data was prepared before planning
        prepare_data.prepare_here(names, root=root, download=download)


def _slots(space: Any) -> float:
    import ray

    cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    gpus = ray.cluster_resources().get("GPU", 0)
    by_cpu = cpus // space.cpus_per_trial
    by_gpu = gpus // space.gpus_per_trial if space.gpus_per_trial else by_cpu
    return max(1.0, float(min(by_cpu, by_gpu)))


if __name__ == "__main__":
    raise SystemExit(main())
