"""Diagnostic: how much of a sweep's time MLflow's per-trial writes cost.

Runs ``python -m sweeps.launch`` on the benchmark space with the tracker's per-trial write (create
the child run, log its params and epochs, end it) replaced by a no-op in the launcher process;
the parent run and its time split are still logged. Compare its printed ``time:`` line with a
normal run of the same length (``python -m sweeps.bench`` records one). A measurement, not an
option of dpsweep: a sweep whose trials are not logged is not one a user can look at.

    PYTHONPATH=. python bench/sweep_without_trial_logging.py --seconds 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

SPACE = Path(__file__).resolve().parent / "spaces" / "digits_bench.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()

    import sweeps.tracking
    from sweeps.launch import main as launch

    sweeps.tracking.SweepTracker._log_trial = lambda self, **kwargs: None
    with tempfile.TemporaryDirectory() as folder:
        return launch(
            [
                "--space",
                str(SPACE),
                "--time-budget",
                str(args.seconds),
                "--trials",
                "100000",
                "--tracking-uri",
                f"sqlite:///{folder}/mlflow.db",
                "--results-dir",
                f"{folder}/results",
            ]
        )


if __name__ == "__main__":
    raise SystemExit(main())
