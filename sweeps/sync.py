"""``python -m sweeps.sync JOURNAL``: replay the MLflow writes a sweep kept while MLflow was away."""

from __future__ import annotations

import argparse
import sys

from sweeps.tracking import SweepTracker, TrackingUnavailable

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
    print(f"replayed {count} tracking writes from {args.journal} into MLflow; the journal is removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
