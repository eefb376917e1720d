"""A sweep's start: its MLflow parent run and Ray, in the order that leaves nothing behind on a
refusal; then its skipped trials, its progress display and, for Optuna, its searcher."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from dp_core.config import ConfigError
from sweeps.driver import prepare_data, runner
from sweeps.driver.preparation import PreparedSweep, SweepRequest, sweep_filter
from sweeps.driver.progress import SweepProgress
from sweeps.driver.resources import NodeResources, TrialResources, cluster_nodes, require_fit, this_machine
from sweeps.driver.search import BudgetedOptunaSearch
from sweeps.planning import plan_trial
from sweeps.privacy import sweep_secret
from sweeps.privacy.ledger import LEDGER_FILE, PrivacyLedger
from sweeps.tracking import SweepTracker, TrackingRefused, TrackingUnavailable, default_tracking_uri

__all__ = ["OpenSweep", "open_sweep", "SweepTrials", "start_trials", "PUBLIC_SEED_CAVEAT"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenSweep:
    """A started sweep: its parent run's tracker, where it journals while MLflow is away, its ledger."""

    tracker: SweepTracker
    tracking_uri: str
    journal: Path
    ledger: PrivacyLedger


PUBLIC_SEED_CAVEAT = (
    "this space fixes its randomness (seed:, fixed.seed or a seed axis): a reproducible research run. Every ε "
    "printed and logged holds only against someone who does not know that seed; whoever has the space file can "
    "regenerate each trial's noise. Remove the seeds for a secret seed drawn per sweep."
)


def open_sweep(request: SweepRequest, prepared: PreparedSweep) -> OpenSweep:
    """Start the sweep's parent run and connect Ray; keep the sweep's secret; open its ledger.

    A cluster that can never hold a trial, or data that cannot be had, stops the sweep before any
    trial: with a local store before MLflow too, so nothing is created. A tracking server signs the
    sweep in first (a refused account stops it before Ray starts); its parent run is then closed.
    """
    space, name = prepared.space, prepared.name
    delta, accountant = prepared.delta, prepared.accountant
    tracking_uri = request.tracking_uri or default_tracking_uri()
    cluster_first = not tracking_uri.startswith(("http://", "https://"))
    if request.cluster_address is None:  # local Ray: a trial this machine can never hold stops before it starts
        _require_fit(space, request, read_nodes=lambda: this_machine(request.num_cpus))
    if cluster_first:
        runner.connect_ray(request.address, num_cpus=request.num_cpus, runtime_env=prepared.runtime_env)
        _ready_cluster(space, request, download=prepared.download)
    journal = prepared.results_dir / f"{name}-mlflow-journal.jsonl"
    tracker = SweepTracker(tracking_uri=tracking_uri, experiment=request.experiment, journal=journal)
    try:
        tracker.start_sweep(
            sweep_id=name,
            run_name=name,
            params={
                "space": space.name,
                "space_file": str(space.source),
                "search": space.search,
                "objective": space.objective,
                "pruner": space.pruner,
                "epsilon_budget": space.epsilon_budget,
                "delta": delta,
                "accountant": accountant,
                "trials": space.trials,
                **{f"fixed.{k}": v for k, v in space.fixed.items()},
                **_versions(),
            },
            tags={"dpsweep.space": space.name},
        )
    except TrackingUnavailable as error:
        raise ConfigError(f"{error}. Start the tracking server or pass another --tracking-uri.") from None
    except TrackingRefused as error:  # before Ray starts: nothing has run
        raise ConfigError(str(error)) from None
    if not cluster_first:
        try:
            runner.connect_ray(request.address, num_cpus=request.num_cpus, runtime_env=prepared.runtime_env)
            _ready_cluster(space, request, download=prepared.download)
        except ConfigError as error:
            tracker.log_sweep_tags({"dpsweep.state": "failed", "dpsweep.failure": str(error)[:4000]})
            tracker.end_sweep(status="FAILED")
            raise
    if not space.public_seed:
        sweep_secret.keep(prepared.folder, space.seed)
    prepared.folder.mkdir(parents=True, exist_ok=True)
    _record_own_data(tracker, prepared)
    ledger = PrivacyLedger(prepared.folder / LEDGER_FILE)
    print(
        f"sweep {name}: space {space.name} ({space.search}), ε budget {space.epsilon_budget} "
        f"(δ = {delta:g}, {accountant.upper()} accountant); MLflow {tracking_uri}, "
        f"experiment {request.experiment!r}, parent run {tracker.parent_run_id}",
        flush=True,
    )
    if space.public_seed:
        print(f"note: {PUBLIC_SEED_CAVEAT}", flush=True)
        tracker.log_sweep_tags({"dpsweep.privacy_caveat": PUBLIC_SEED_CAVEAT})
    return OpenSweep(tracker=tracker, tracking_uri=tracking_uri, journal=journal, ledger=ledger)


@dataclasses.dataclass(kw_only=True)
class SweepTrials:
    """What runs the trials of a started sweep: its progress display, its searcher (Optuna) and
    the count of trials skipped before they ran."""

    progress: SweepProgress
    searcher: BudgetedOptunaSearch | None
    skipped: int = 0


def start_trials(request: SweepRequest, prepared: PreparedSweep, opened: OpenSweep) -> SweepTrials:
    """Record the grid's over-budget trials as skipped, start the progress display, and make an
    Optuna sweep's searcher (its over-budget suggestions are skipped as they come)."""
    space, tracker = prepared.space, opened.tracker
    # Trials by outcome, time, best so far per ε bound (sweeps.driver.progress). No total with private
    # selection: the number of trials run is K, which is not shown.
    grid = prepared.grid
    total = None if space.private_selection is not None else len(grid) if grid else space.trials
    trials = SweepTrials(
        progress=SweepProgress(
            total=total, epsilon_budget=space.epsilon_budget, time_budget_s=request.time_budget, verbose=request.verbose
        ),
        searcher=None,
    )
    on_skip = _skip_recorder(trials, tracker)
    if grid is not None:
        for trial in prepared.over_budget:
            on_skip(trial, dict(trial.axis_values), prepared.budget.rejects(trial) or "")
        over_budget = prepared.over_budget
        to_run = "K drawn" if space.private_selection is not None else str(len(prepared.runnable or []))
        names = ", ".join(t.name for t in over_budget[:8]) + (", …" if len(over_budget) > 8 else "")
        print(
            f"{len(grid)} grid points: {to_run} to run, {trials.skipped} skipped over budget"
            + (f" ({names})" if over_budget and not request.verbose else ""),
            flush=True,
        )
        if space.private_selection is not None:
            # Not K: the sweep ε holds only while K is unknown (sweeps.privacy.selection).
            print(
                f"private selection: drew the trial count K ~ {space.private_selection.distribution} (mean "
                f"{space.private_selection.mean:g}) and each trial uniformly from the {len(prepared.admitted or [])} "
                "admitted grid points, with its own secret seed; K is not shown",
                flush=True,
            )
        return trials
    prepared.results_dir.mkdir(parents=True, exist_ok=True)
    trials.searcher = BudgetedOptunaSearch(
        space,
        storage=prepared.results_dir / f"{prepared.name}-optuna.journal",
        study_name=prepared.name,
        plan=lambda values, name: plan_trial(
            values, name=name, axis_values={k: values[k] for k in space.axes}, where=str(space.source)
        ),
        on_skip=on_skip,
        ledger=opened.ledger,
        sweep_filter=sweep_filter(space, prepared.delta),
    )
    return trials


def _skip_recorder(trials: SweepTrials, tracker: SweepTracker) -> Callable[[Any, dict[str, Any], str], None]:
    def on_skip(planned: Any, values: dict[str, Any], reason: str) -> None:
        trials.skipped += 1
        if planned is not None:
            tracker.log_skipped(
                key=planned.key,
                name=planned.name,
                params=planned.params(),
                planned_epsilon=planned.planned_epsilon,
                reason=reason,
            )
        # A configuration that could not be planned at all is shown in any case: its reason is an error.
        trials.progress.skipped(
            name=planned.name if planned is not None else values.get("name", "?"), reason=reason, show=planned is None
        )

    return on_skip


def _record_own_data(tracker: SweepTracker, prepared: PreparedSweep) -> None:
    """Each own dataset: its provenance on the parent run (no values), its caveats as a tag, its digest in
    the sweep's folder for --resume to check."""
    for dataset in prepared.own_data:
        spec, splits = dataset.spec, dataset.splits
        tracker.log_dataset(
            name=spec.display_name,
            source=spec.path if spec.path is not None else str(spec.loader_dir),
            loader=spec.loader,
            digest=dataset.digest,
            input_shape=splits.input_shape,
        )
        if dataset.caveats:
            tracker.log_sweep_tags({"dpsweep.data_caveat": " | ".join(dataset.caveats)[:4000]})
    prepare_data.keep_digests(prepared.folder, prepared.own_data)


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


def _ready_cluster(space: Any, args: SweepRequest, *, download: bool) -> None:
    """Exit 2 (ConfigError) unless a trial fits the cluster (sweeps.driver.resources), then prepare the data
    (sweeps.driver.prepare_data): here on local Ray, once per node on a cluster."""
    if args.wait_for_resources < 0:
        raise ConfigError(
            f"Expected --wait-for-resources >= 0, but got --wait-for-resources {args.wait_for_resources:g}."
        )
    _require_fit(space, args)
    address = args.cluster_address
    names, root = prepare_data.datasets_of(space), space.fixed.get("data_root")
    if address is not None:
        prepare_data.prepare_on_nodes(names, root=root, download=download)
    elif space.kind != "federated":  # a federated space's data was prepared before planning
        prepare_data.prepare_here(names, root=root, download=download)


def _require_fit(
    space: Any, args: SweepRequest, *, read_nodes: Callable[[], list[NodeResources]] = cluster_nodes
) -> None:
    where = f"--resources {args.resources}" if args.resources else f"resources: in {space.source}"
    require_fit(
        TrialResources(cpus=space.cpus_per_trial, gpus=space.gpus_per_trial),
        where=where,
        address=args.cluster_address,
        wait_seconds=args.wait_for_resources,
        spread=space.kind == "federated",
        read_nodes=read_nodes,
    )
