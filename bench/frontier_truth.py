"""Does the frontier tell the truth? Each side's reported configuration, retrained with fresh seeds.

``python bench/frontier_truth.py [--seconds 150] [--seeds 8]`` on digits (``bench/spaces/digits_truth.yaml``:
digits_bench with the batch size as an axis too, so the trainer's defaults lie inside the space):

1. dpsweep: an open-ended Optuna sweep under ``--time-budget``, then its confirmation stage (the
   nominees and the trainer's defaults, chosen on validation, the choice refit on train +
   validation); its report per ε bound is the refit runs' test accuracy, mean ± std.
2. The standard Ray Tune + Optuna pattern (``sweeps.bench``), given dpsweep's whole wall time
   (search and confirmation); its report per ε bound is its best test accuracy, as its users read it.
3. The trainer's defaults, no sweep: ``dp_core.train`` with ``--target-epsilon E`` only.

Then every reported configuration is trained again ``--seeds`` times with seeds no run used
(drawn from the OS), each the way its side trains it, and measured on the test split. Printed
per ε ≤ 1, 3, 8: reported, retrained mean ± std, and the gap; written to
``bench/results/frontier-truth-*.json``. Calibration: reported minus retrained. Selection: a
side's retrained mean against the others'.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.bench import BUCKETS, standard_trainable_run  # noqa: E402

SPACE = ROOT / "bench" / "spaces" / "digits_truth.yaml"


def _fresh_seed() -> int:
    return secrets.randbits(62)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else math.nan,
        "runs": values,
    }


def run_dpsweep(space: Path, seconds: float, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--time-budget",
            str(seconds),
            "--trials",
            "100000",
            "--tracking-uri",
            f"sqlite:///{workdir}/mlflow.db",
            "--results-dir",
            str(workdir / "results"),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"dpsweep failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}")
    (sweep,) = [p for p in (workdir / "results").iterdir() if p.is_dir()]
    best = {b["epsilon_at_most"]: b for b in json.loads((sweep / "frontier" / "best_per_epsilon.json").read_text())}
    ledger = [json.loads(line) for line in (sweep / "privacy-ledger.jsonl").read_text().splitlines() if line.strip()]
    trials = sum(e["role"] == "trial" for e in ledger)
    reported = {}
    for bound in BUCKETS:
        chosen = best.get(bound)
        if chosen and chosen.get("test_accuracy_mean") is not None:
            reported[bound] = {
                "test_accuracy": chosen["test_accuracy_mean"],
                "std": chosen["test_accuracy_std"],
                "epsilon": chosen["epsilon"],
                "trial": chosen["trial"],
                "epoch": chosen["epoch"],
                "config": chosen["train_config"],
            }
    # What each bound's choice saw: every confirmed candidate's mean validation accuracy (and, for
    # the record, its test accuracy, which no decision read).
    with (sweep / "frontier" / "frontier.csv").open(newline="") as handle:
        seen = [
            {
                "trial": r["trial"],
                "epoch": int(r["epoch"]),
                "epsilon": float(r["epsilon"]),
                "val_mean": float(r["val_accuracy"]),
                "test_mean": float(r["test_accuracy_mean"]),
                "trained_on": r["trained_on"],
                "best_for": r["best_for_epsilon"],
            }
            for r in csv.DictReader(handle)
            if r["kind"] == "confirmed"
        ]
    return {"wall_seconds": wall, "trials": trials, "reported": reported, "candidates": seen}


def retrain_dpsweep(reported: dict[float, Any], seeds: int) -> dict[float, Any]:
    from sweeps.protocol import ConfirmationJob
    from sweeps.workers.confirmation import train_jobs

    retrained = {}
    for bound, chosen in reported.items():
        # The reported configuration whole: its epochs, its calibrated σ; only the seed is new.
        jobs = [
            ConfirmationJob(
                name=f"retrain{i}",
                trial=str(chosen["trial"]),
                epoch=int(chosen["config"]["epochs"]),
                bound=float(bound),
                seed_index=i,
                train={**chosen["config"], "seed": _fresh_seed()},
            )
            for i in range(seeds)
        ]
        retrained[bound] = _mean_std([row.test_accuracy for row in train_jobs(jobs)])
    return retrained


def run_standard(space: dict[str, Any], seconds: float, workdir: Path) -> dict[str, Any]:
    from sweeps.bench import run_standard_points

    points = run_standard_points(space, seconds=seconds, workdir=workdir)
    reported = {}
    for bound in BUCKETS:
        eligible = [p for p in points if math.isfinite(p["epsilon"]) and p["epsilon"] <= bound]
        if eligible:
            best = max(eligible, key=lambda p: p["test_accuracy"])
            reported[bound] = {
                "test_accuracy": best["test_accuracy"],
                "epsilon": best["epsilon"],
                "epoch": best["epoch"],
                "config": best["config"],
            }
    return {"trials": len({p["trial"] for p in points}), "reported": reported}


def retrain_standard(reported: dict[float, Any], seeds: int) -> dict[float, Any]:
    # The standard trainable draws from torch's global generator, unseeded: fresh on every call.
    return {
        bound: _mean_std([standard_trainable_run(chosen["config"], stop_epoch=chosen["epoch"]) for _ in range(seeds)])
        for bound, chosen in reported.items()
    }


def run_defaults(seeds: int) -> dict[float, Any]:
    from dp_core.config import TrainConfig
    from dp_core.data import load_dataset
    from dp_core.train import train

    data = load_dataset("digits")
    return {
        bound: _mean_std(
            [
                train(
                    TrainConfig.from_dict({"dataset": "digits", "target_epsilon": bound, "seed": _fresh_seed()}),
                    data=data,
                ).final.test_accuracy
                for _ in range(seeds)
            ]
        )
        for bound in BUCKETS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="dpsweep's search time budget (default 150)")
    parser.add_argument("--seeds", type=int, default=8, help="fresh seeds per retrained configuration (default 8)")
    parser.add_argument("--space", type=Path, default=SPACE, help="the space both sweeps search (default digits_truth)")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)
    space = yaml.safe_load(args.space.read_text())
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "dpsweep").mkdir()
        (Path(folder) / "standard").mkdir()
        dpsweep = run_dpsweep(args.space, args.seconds, Path(folder) / "dpsweep")
        dpsweep["retrained"] = retrain_dpsweep(dpsweep["reported"], args.seeds)
        standard = run_standard(space, dpsweep["wall_seconds"], Path(folder) / "standard")
        standard["retrained"] = retrain_standard(standard["reported"], args.seeds)
    defaults = run_defaults(args.seeds)
    result = {
        "benchmark": f"frontier truth: reported vs retrained with fresh seeds, {args.space.stem}, Optuna",
        "date": time.strftime("%Y-%m-%d"),
        "search_seconds": args.seconds,
        "seeds": args.seeds,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "accountant": "PRV",
        "delta": space["fixed"]["delta"],
        "dpsweep": dpsweep,
        "standard_pattern": standard,
        "trainer_defaults": defaults,
    }
    tag = f"-{args.tag}" if args.tag else ""
    out = ROOT / "bench" / "results" / f"frontier-truth-cpu{os.cpu_count()}-{result['date']}{tag}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(
        f"dpsweep: {dpsweep['trials']} trials in {dpsweep['wall_seconds']:.0f} s (search + confirmation); standard "
        f"pattern: {standard['trials']} trials in the same time. Test accuracy, retrained = mean ± std over "
        f"{args.seeds} fresh seeds (PRV, δ = {space['fixed']['delta']:g})."
    )
    print(
        f"{'ε ≤':>4}  {'dpsweep reported':>17}  {'retrained':>15}  {'gap':>6}  {'standard reported':>17}  "
        f"{'retrained':>15}  {'gap':>6}  {'defaults':>15}"
    )
    for bound in BUCKETS:

        def cell(side: dict[str, Any], bound: float = bound) -> tuple[str, str, str]:
            if bound not in side["reported"]:
                return "—", "—", "—"
            reported, again = side["reported"][bound]["test_accuracy"], side["retrained"][bound]
            return f"{reported:.4f}", f"{again['mean']:.4f} ± {again['std']:.4f}", f"{reported - again['mean']:+.4f}"

        d, s, default = cell(dpsweep), cell(standard), defaults[bound]
        print(
            f"{bound:>4g}  {d[0]:>17}  {d[1]:>15}  {d[2]:>6}  {s[0]:>17}  {s[1]:>15}  {s[2]:>6}  "
            f"{default['mean']:.4f} ± {default['std']:.4f}"
        )
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
