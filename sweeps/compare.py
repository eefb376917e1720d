"""``python -m sweeps.compare SWEEP [SWEEP ...]``: several sweeps' confirmed frontiers on one plot.

Each SWEEP is a sweep's parent run id or its name (``digits_quick-20261207-031500``), read from
``--tracking-uri`` (any MLflow store). The sweeps' ε must share δ and accountant (exit 2 if not).
Writes ``compare.png`` and ``compare.csv`` to ``--out``; ``--log`` logs both to a run of their own.
The drawing is :mod:`sweeps.results.compare`'s, the reading :mod:`sweeps.tracking.sweep_runs`'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dp_core.config import ConfigError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", metavar="SWEEP", help="a sweep's parent run id or name")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI the sweeps are in (default: MLflow's own, sqlite:///mlflow.db)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("dpsweep_compare"), help="folder for compare.png and compare.csv"
    )
    parser.add_argument("--title", default="", help="the plot's title (default: the sweeps' names)")
    parser.add_argument(
        "--log", action="store_true", help="also log the PNG and CSV to a new MLflow run (role comparison)"
    )
    parser.add_argument(
        "--experiment", help="with --log: the experiment of the comparison's run (default: the first sweep's)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _compare(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _compare(args: argparse.Namespace) -> int:
    from sweeps.results.compare import check_comparable, plot_frontiers, write_frontiers_csv
    from sweeps.tracking import default_tracking_uri
    from sweeps.tracking.sweep_runs import log_comparison, read_frontiers

    tracking_uri = args.tracking_uri or default_tracking_uri()
    frontiers = read_frontiers(args.sweeps, tracking_uri=tracking_uri)
    check_comparable(frontiers)
    png = args.out / "compare.png"
    plot_frontiers(png, frontiers, title=args.title)
    table = write_frontiers_csv(args.out / "compare.csv", frontiers)
    for frontier in frontiers:
        cells = ", ".join(f"ε ≤ {r.bound:g} {r.test_mean:.3f} ± {r.test_std:.3f}" for r in frontier.results)
        print(f"{frontier.name}: {cells}")
    first = frontiers[0]
    print(f"(test accuracy, mean ± std over fresh seeds; δ = {first.delta:g}, {first.accountant.upper()} accountant)")
    print(f"wrote {png} and {table}")
    if args.log:
        run_id = log_comparison([png, table], frontiers, tracking_uri=tracking_uri, experiment=args.experiment)
        print(f"logged to run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
