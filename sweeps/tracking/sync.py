"""``python -m sweeps.sync JOURNAL``: replay the MLflow writes a sweep kept while MLflow was away.

The account is MLflow's own, from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or
``MLFLOW_TRACKING_TOKEN``), as for the sweep; the journal holds none. Exit codes: 0 replayed,
1 MLflow still unreachable (the journal is kept), 2 MLflow refused the account (kept too).
"""

from __future__ import annotations

import argparse
import sys

from sweeps.tracking import SweepTracker, TrackingRefused, TrackingUnavailable

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.sync", description=__doc__.splitlines()[0])
    parser.add_argument("journal", help="the *-mlflow-journal.jsonl file the sweep named")
    parser.add_argument("--tracking-uri", help="replay into this store instead of the one the sweep used")
    args = parser.parse_args(argv)
    try:
        count = SweepTracker.replay(args.journal, tracking_uri=args.tracking_uri)
    except TrackingUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrackingRefused as error:
        print(f"error: {error} {args.journal} is kept.", file=sys.stderr)
        return 2
    print(f"replayed {count} tracking writes from {args.journal} into MLflow; the journal is removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
