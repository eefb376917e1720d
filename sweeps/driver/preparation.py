"""A sweep before it touches Ray or MLflow: its space, name, secret and every grid trial planned.

Bad input (a space file with a typo, δ ≥ 1/N, a budget nothing fits) stops the sweep here, with
nothing created. What the launcher was asked is a :class:`SweepRequest`; what this phase decides
is a :class:`PreparedSweep`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from dp_core.config import ConfigError
from sweeps.driver import prepare_data
from sweeps.driver.resources import with_resources
from sweeps.driver.user_code import check_own_models, code_runtime_env
from sweeps.planning import EpsilonBudget, PlannedTrial, plan_grid
from sweeps.privacy import sweep_secret
from sweeps.space import SearchSpace, load_space

__all__ = ["SweepRequest", "PreparedSweep", "prepare_sweep", "sweep_filter"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepRequest:
    """What ``python -m sweeps.launch`` was asked: its command line, one field per option.

    The options are checked where they are used (the space by :func:`sweeps.space.load_space`,
    ``resources`` by :func:`sweeps.driver.resources.parse_resources`, …), so that each error names
    what it concerns; :func:`prepare_sweep` makes the first of those checks.

    Args:
        space: a shipped space's name or a path to a ``.yaml`` file (``--space``).
        search: ``grid`` or ``optuna``, overriding the space's search mode (``--search``).
        trials: the number of Optuna trials, overriding the space's (``--trials``).
        time_budget: seconds after which no trial starts or runs on (``--time-budget``).
        address: a Ray cluster's address; None starts local Ray (``--address``).
        num_cpus: the CPUs of a local Ray (``--num-cpus``).
        resources: ``cpus=N,gpus=M`` per trial, overriding the space's (``--resources``).
        wait_for_resources: seconds to wait for a node that can hold one trial (``--wait-for-resources``).
        tracking_uri: MLflow's tracking URI; None: MLflow's default (``--tracking-uri``).
        experiment: the MLflow experiment (``--experiment``).
        results_dir: where Ray Tune keeps trial state and checkpoints (``--results-dir``).
        resume: ``"latest"`` or a sweep folder's name to continue (``--resume``).
        audit: retrain the best trial with canaries afterwards (``--audit``).
        verbose: one line per trial, and the libraries' own start-up output (``--verbose``).

    Example:
        >>> from sweeps.launch import build_parser
        >>> args = build_parser().parse_args(["--space", "digits_quick", "--num-cpus", "2"])
        >>> request = SweepRequest.from_args(args)
        >>> request.space, request.num_cpus, request.search, str(request.results_dir)
        ('digits_quick', 2, None, 'dpsweep_results')
    """

    space: str
    search: str | None = None
    trials: int | None = None
    time_budget: float | None = None
    address: str | None = None
    num_cpus: int | None = None
    resources: str | None = None
    wait_for_resources: float = 0.0
    tracking_uri: str | None = None
    experiment: str = "dpsweep"
    results_dir: Path = Path("dpsweep_results")
    resume: str | None = None
    audit: bool = False
    verbose: bool = False

    @classmethod
    def from_args(cls, args: Any) -> SweepRequest:
        """The request from the launcher's parsed command line (:func:`sweeps.launch.build_parser`).

        Args:
            args: an :class:`argparse.Namespace` with an attribute for every field.

        Returns:
            The request, every field copied from ``args``.

        Raises:
            AttributeError: ``args`` lacks a field (a parser that is not the launcher's).
        """
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @property
    def cluster_address(self) -> str | None:
        """The Ray cluster the sweep attaches to: ``address``, or RAY_ADDRESS (a Ray Job's driver
        attaches to its cluster through it, without --address); None for local Ray."""
        return self.address or os.environ.get("RAY_ADDRESS") or None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreparedSweep:
    """A sweep's space (overrides and secret seed applied), its folders, and its planned grid.

    ``grid`` is None for an Optuna sweep (its trials are planned as they are asked). ``admitted``
    are the grid trials within the ε budget, ``runnable`` those that will run (with private
    selection, the K drawn from them), ``over_budget`` the rest.
    """

    space: SearchSpace
    name: str
    results_dir: Path
    download: bool
    grid: list[PlannedTrial] | None
    admitted: list[PlannedTrial] | None
    runnable: list[PlannedTrial] | None
    over_budget: list[PlannedTrial]
    planning_seconds: float
    runtime_env: dict[str, Any] | None = None  # Ray's, carrying the space's own code (sweeps.driver.user_code)
    own_data: tuple[Any, ...] = ()  # the own datasets read (dp_core.own_data.OwnDataset), kept in this process

    @property
    def folder(self) -> Path:
        return self.results_dir / self.name

    @property
    def delta(self) -> float:
        return self.grid[0].plan.delta if self.grid else float(self.space.fixed.get("delta", 1e-5))

    @property
    def accountant(self) -> str:
        return self.grid[0].plan.accountant if self.grid else str(self.space.fixed.get("accountant", "prv"))

    @property
    def budget(self) -> EpsilonBudget:
        return EpsilonBudget(self.space.epsilon_budget)


def prepare_sweep(request: SweepRequest, *, space: SearchSpace | None = None) -> PreparedSweep:
    """Load and override the space, prepare its data here when planning needs it, draw or read the
    secret seed, and plan every grid trial (raises ConfigError on anything no sweep can run).

    ``space``: ``request.space`` already loaded (the launcher loads it before importing this module).
    """
    space = space if space is not None else load_space(request.space)
    if request.search or request.trials:
        space = space.with_overrides(search=request.search, trials=request.trials)
    if request.resources:
        space = with_resources(space, request.resources)
    # Trials never download: the launcher fetches and verifies the data once, before any starts.
    download = prepare_data.downloads_wanted(space)
    space = prepare_data.without_downloads(space)
    own_data = prepare_data.read_own(space)  # once, here: planning needs its N; a bad file stops the sweep now
    check_own_models(space)  # an own model Opacus refuses, or with the wrong outputs, stops here
    runtime_env = code_runtime_env(space)
    if space.kind == "federated":  # its planning reads the training labels
        prepare_data.prepare_here(prepare_data.datasets_of(space), root=space.fixed.get("data_root"), download=download)
    results_dir = request.results_dir.resolve()
    name = _sweep_name(space.name, results_dir, request.resume)
    if request.resume:
        prepare_data.check_digests(results_dir / name, own_data)
    # The root of every random choice: the one an earlier launch kept, or a new secret (kept once
    # the sweep has started). A space that sets seed: keeps its own, public one.
    kept_root = sweep_secret.read(results_dir / name) if request.resume else None
    space = space.with_secret_seed(kept_root if kept_root is not None else sweep_secret.draw())
    budget = EpsilonBudget(space.epsilon_budget)
    planning_started = time.monotonic()
    grid = plan_grid(space) if space.search == "grid" else None
    planning_seconds = time.monotonic() - planning_started
    admitted = [t for t in grid if budget.rejects(t) is None] if grid is not None else None
    over_budget = [t for t in grid if budget.rejects(t) is not None] if grid is not None else []
    if grid is not None and not admitted:
        cheapest = min(grid, key=lambda t: t.planned_epsilon)
        raise ConfigError(
            f"Expected epsilon_budget to admit at least one trial, but got epsilon_budget={space.epsilon_budget} "
            f"in {space.source}: the cheapest trial ({dict(cheapest.axis_values)}) plans "
            f"ε = {cheapest.planned_epsilon:.3f} (δ = {cheapest.plan.delta:g}, "
            f"{cheapest.plan.accountant.upper()} accountant). Raise the budget or the noise."
        )
    runnable = admitted
    if grid is not None and space.private_selection is not None:
        from sweeps.privacy.selection import select_trials

        if request.time_budget is not None:
            raise ConfigError(
                f"Expected no --time-budget with private_selection (in {space.source}), but got --time-budget "
                f"{request.time_budget:g}: trials not started by the deadline would cut the drawn trial count short, "
                "and the guarantee is for K drawn from the distribution, not a truncated one."
            )
        runnable = select_trials(space, admitted)  # K ~ private_selection, drawn before anything runs
    if request.audit and (grid is None or space.kind != "train"):
        raise ConfigError(
            f"Expected a grid sweep of kind: train with --audit (it retrains the best planned trial), but got "
            f"search={space.search!r}, kind={space.kind!r} in {space.source}."
        )
    return PreparedSweep(
        space=space,
        name=name,
        results_dir=results_dir,
        download=download,
        grid=grid,
        admitted=admitted,
        runnable=runnable,
        over_budget=over_budget,
        planning_seconds=planning_seconds,
        runtime_env=runtime_env,
        own_data=own_data,
    )


def _sweep_name(space_name: str, results_dir: Path, resume: str | None) -> str:
    if resume is None:
        return f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume != "latest":
        if not (results_dir / resume).is_dir():
            raise ConfigError(f"Expected --resume to name a sweep folder in {results_dir}, but got {resume!r}.")
        return resume
    # A sweep folder is one Ray Tune can restore from (it holds Tune's experiment state).
    earlier = sorted(
        p.name for p in results_dir.glob(f"{space_name}-*") if p.is_dir() and any(p.glob("experiment_state*.json"))
    )
    if not earlier:
        raise ConfigError(
            f"Expected an earlier sweep of space {space_name!r} in {results_dir} to resume, but found none."
        )
    return earlier[-1]


def sweep_filter(space: Any, delta: float) -> Any:
    """The RDP filter of an Optuna sweep with sweep_epsilon_budget (sweeps.privacy.adaptive), else None."""
    if space.sweep_epsilon_budget is None:
        return None
    from sweeps.privacy.adaptive import RdpFilter

    try:
        return RdpFilter.for_budget(epsilon=space.sweep_epsilon_budget, delta=delta)
    except ValueError as error:
        raise ConfigError(f"{error} (in {space.source})") from None
