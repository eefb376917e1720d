"""``python -m sweeps.launch --space NAME``: run a DP-SGD sweep and leave its frontier in MLflow.

Order of work (each phase a module of :mod:`sweeps.driver`): load and validate the space and
plan every trial's privacy spend, before Ray or MLflow is touched (``preparation``: bad input stops
here); open the MLflow parent run and Ray, record over-budget trials as skipped (``session``);
run the rest on Ray Tune (``runner``); then confirm, compute the accuracy-vs-ε frontier and the
privacy statement, and attach them to the parent run (``finish``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dp_core.config import ConfigError

if TYPE_CHECKING:  # imported in _run: --help and --list answer without loading the sweep stack
    from sweeps.driver.preparation import SweepRequest

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--space", help="a shipped space name (see --list) or a path to a .yaml file")
    parser.add_argument("--list", action="store_true", help="list the shipped search spaces and exit")
    parser.add_argument("--search", choices=("grid", "optuna"), help="override the space's search mode")
    parser.add_argument("--trials", type=int, help="override the number of Optuna trials")
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop starting and running trials after this many seconds (Ray Tune time_budget_s)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: start local Ray)")
    parser.add_argument(
        "--num-cpus",
        type=int,
        metavar="N",
        help="start local Ray with N CPUs instead of all of this machine's: how many trials run at "
        "once (N / the CPUs per trial), e.g. to make a sweep behave alike on any machine; not "
        "with --address",
    )
    parser.add_argument(
        "--resources",
        metavar="cpus=N,gpus=M",
        help="override the space's resources per trial, e.g. cpus=2,gpus=0 (CPU only)",
    )
    parser.add_argument(
        "--wait-for-resources",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on an autoscaling cluster (--address, or a Ray Job): wait up to this long for a node that "
        "can hold one trial (default 0: fail at once, exit 2)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLflow's own default, "
        "sqlite:///mlflow.db); a server's account comes from MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD",
    )
    parser.add_argument("--experiment", default="dpsweep", help="MLflow experiment name (default: dpsweep)")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("dpsweep_results"),
        help="where Ray Tune keeps trial state and checkpoints (default: ./dpsweep_results)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="SWEEP",
        help="continue an interrupted sweep (the latest of this space, or a sweep folder name)",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="after the sweep, retrain the best trial with canaries and log an empirical ε lower "
        "bound next to its theoretical ε (grid sweeps of kind: train)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="one line per trial and per skipped trial, and Ray's, MLflow's and Optuna's own "
        "start-up output (default: a live progress display, or a summary line every 30 s "
        "without a terminal)",
    )
    return parser


def _list_spaces() -> int:
    from sweeps.space import list_spaces

    for space in list_spaces():
        print(f"{space.name:<18} {space.search:<7} {space.description}")
    return 0


#: Every numeric option: its argparse dest -> (flag, the smallest value it takes, whether that
#: value itself is allowed, what the value is). --resources holds numbers too: check_options
#: parses it as the launcher will.
NUMERIC_OPTIONS: dict[str, tuple[str, float, bool, str]] = {
    "trials": ("--trials", 1, True, "the number of trials"),
    "time_budget": ("--time-budget", 0, False, "seconds"),
    "num_cpus": ("--num-cpus", 1, True, "CPUs"),
    "wait_for_resources": ("--wait-for-resources", 0, True, "seconds"),
}


def check_options(args: argparse.Namespace) -> None:
    """Refuse a numeric option out of its range before anything starts (ConfigError: exit 2).

    Example:
        >>> check_options(build_parser().parse_args(["--space", "digits_quick", "--time-budget", "-5"]))
        Traceback (most recent call last):
        ...
        dp_core.errors.ConfigError: Expected --time-budget > 0 (seconds), but got --time-budget -5.
    """
    for dest, (flag, lowest, inclusive, what) in NUMERIC_OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        fits = math.isfinite(value) and (value >= lowest if inclusive else value > lowest)
        if not fits:
            rule = f"{'>=' if inclusive else '>'} {lowest:g}"
            raise ConfigError(f"Expected {flag} {rule} ({what}), but got {flag} {value:g}.")
    if args.resources is not None:
        from sweeps.driver.resources import TrialResources, parse_resources

        # Keys left out keep the space's values (checked with the space): any valid ones stand in here.
        try:
            parse_resources(args.resources, default=TrialResources(cpus=1, gpus=0))
        except ConfigError as error:
            named = str(error) if "--resources" in str(error) else f"{error} (--resources {args.resources})"
            raise ConfigError(named) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return _list_spaces()
    if not args.space:
        print("error: give --space NAME (or --list to see the shipped spaces)", file=sys.stderr)
        return 2
    try:
        check_options(args)
        return _run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from sweeps.space import load_space

    # The space file first: it is checked without torch, Ray or MLflow (a typo answers in a second).
    space = load_space(args.space)
    from sweeps.driver.preparation import SweepRequest, prepare_sweep

    request = SweepRequest.from_args(args)
    _check_local_ray(request)
    # Everything the sweep writes (Tune's state with the trials' seeds, the secret, the ledger,
    # Ray's session files) is for its owner only.
    os.umask(0o077)
    prepared = prepare_sweep(request, space=space)
    _say_what_trials_does(request, prepared)
    _say_checkpoint_volume(prepared, time_budget_s=request.time_budget)

    from sweeps.driver.progress import quiet_libraries
    from sweeps.tracking import default_tracking_uri  # noqa: F401  MLflow's import, before its logging is quieted

    if not request.verbose:
        quiet_libraries()  # before Ray starts and MLflow opens its store
    from sweeps.driver import runner
    from sweeps.driver.finish import finish_sweep
    from sweeps.driver.resources import trial_slots
    from sweeps.driver.session import open_sweep, start_trials

    opened = open_sweep(request, prepared)
    trials = start_trials(request, prepared, opened)
    runner.connect_ray(request.address, num_cpus=request.num_cpus, runtime_env=prepared.runtime_env)
    slots = trial_slots(prepared.space)
    callback, results = runner.run_trials(
        prepared.space,
        tracker=opened.tracker,
        storage_path=prepared.results_dir,
        name=prepared.name,
        grid=prepared.runnable,
        searcher=trials.searcher,
        resume=request.resume is not None,
        slots=int(slots),
        time_budget_s=request.time_budget,
        ledger=opened.ledger,
        progress=trials.progress,
    )
    return finish_sweep(request, prepared, opened, trials, callback, results, slots=slots, started=started)


def _check_local_ray(request: SweepRequest) -> None:
    if request.num_cpus is None:
        return
    if request.cluster_address is not None:
        raise ConfigError(
            "Expected --num-cpus only with local Ray, but got it with "
            + ("--address" if request.address else "RAY_ADDRESS set")
            + ": a cluster's CPUs are its nodes' (ray start --num-cpus N)."
        )


def _say_what_trials_does(request: SweepRequest, prepared: Any) -> None:
    """``--trials`` samples that many Optuna trials; on a grid it only caps the points run: one line says which."""
    if request.trials is None or prepared.space.search != "grid":
        return
    total = prepared.space.grid_size
    if request.trials >= total:
        effect = f"no effect here: the grid has {total} points, all of which run"
    else:
        effect = f"the first {request.trials} of its {total} points run"
    print(
        f"note: --trials {request.trials} on a grid space ({prepared.space.name}) only caps its points: {effect} "
        "(--search optuna samples trials instead)",
        file=sys.stderr,
    )


def _say_checkpoint_volume(prepared: Any, *, time_budget_s: float | None = None) -> None:
    """Before anything starts: what the sweep's trials will write in checkpoints, in one line."""
    from sweeps.driver.checkpoint_volume import checkpoint_volume, shapes_known_here
    from sweeps.space.model import candidate_axis_values

    space = prepared.space
    if space.kind == "federated":
        return  # a federated trial keeps no checkpoint
    trials = len(prepared.runnable) if prepared.runnable is not None else space.trials
    volume = checkpoint_volume(
        (space.trial_config(values) for values in candidate_axis_values(space)),
        trials=trials,
        every_minutes=space.checkpoint_every_minutes,
        shape_of=shapes_known_here(prepared.own_data),
        time_budget_s=time_budget_s,
    )
    if volume is not None:
        print(volume.describe(), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
