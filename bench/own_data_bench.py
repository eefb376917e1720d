"""A sweep of the zoo's tabular MLP on an own CSV file: does it pack as digits does, and does its frontier hold?

``python bench/own_data_bench.py [--seconds 150] [--seeds 5]``:

1. Writes the breast cancer table of ``examples/tabular_csv`` (scikit-learn's, bundled; or with
   ``--table digits`` digits' 1797 rows of pixel counts) as a CSV in a temporary folder, beside a
   space like ``bench/spaces/digits_bench.yaml`` (Optuna over target ε, C and lr; 20 epochs,
   batch 64) but of ``model: tabular_mlp`` on that file, with declared classes and bounds.
2. Runs ``python -m sweeps.launch`` on it under ``--time-budget`` (local Ray, 2 CPUs), then its
   confirmation stage. Throughput as ``python -m sweeps.bench`` measures dpsweep's side:
   trial-epochs per second, ``train_share`` as the sweep records it, and how many trials each
   unit of work (Ray Tune trial) trained: above 1, trials were packed.
3. Trains every configuration ``best_per_epsilon.json`` reports ``--seeds`` times again with
   ``python -m dp_core.train --config`` (no seed given: a fresh one drawn each time) and prints,
   per reported bound, reported test accuracy minus the retrained mean.

Written to ``bench/results/own-data-<table>-*.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "tabular_csv"))

from make_data import write_csv  # noqa: E402  # the example's own script

EXAMPLE = ROOT / "examples" / "tabular_csv" / "breast_cancer.yaml"


def write_digits_csv(path: Path) -> Path:
    """scikit-learn's digits (1797 rows) as a CSV of 64 pixel counts (0..16) and a ``digit`` column."""
    from sklearn.datasets import load_digits

    bunch = load_digits(as_frame=True)
    table = bunch.data.copy()
    table["digit"] = bunch.target
    table.to_csv(path, index=False)
    return path


def bench_space(
    csv: Path, table: str, *, confirm_top: int = 2, confirm_seeds: int = 3, validation_fraction: float = 0.1
) -> dict[str, Any]:
    """The table's dataset and the tabular MLP under digits_bench's search: Optuna over target ε, C and lr.

    ``--as-digits-truth`` confirms as ``bench/spaces/digits_truth.yaml`` does (the top 4 with 8
    seeds, refit 8 times, a 20 % validation split), the settings under which digits' reported
    frontier held within a point (``bench/frontier_truth.py``)."""
    if table == "breast_cancer":
        dataset = {**yaml.safe_load(EXAMPLE.read_text())["fixed"]["dataset"], "path": str(csv)}
    else:  # pixel counts 0..16: their bounds are known without looking at the data
        dataset = {"format": "csv", "path": str(csv), "label": "digit", "test_fraction": 0.2, "classes": 10,
                   "bounds": {"low": 0, "high": 16}}  # fmt: skip
    return {
        "name": "tabular_bench",
        "description": "Benchmark space: tabular MLP on an own CSV file, Optuna over target eps, C, lr",
        "fixed": {
            "dataset": dataset,
            "model": "tabular_mlp",
            "optimizer": "sgd",
            "batch_size": 64,
            "epochs": 20,
            "delta": 1.0e-4,
            "accountant": "prv",
            "validation_fraction": validation_fraction,
        },  # fmt: skip
        "axes": {
            "target_epsilon": {"low": 0.5, "high": 8.0, "log": True},
            "max_grad_norm": {"low": 0.25, "high": 4.0, "log": True},
            "lr": {"low": 0.3, "high": 4.0, "log": True},
        },
        "epsilon_budget": 8.0,
        "search": "optuna",
        "trials": 1000,
        "objective": "single",
        "pruner": "asha",
        "resources": {"cpus": 1, "gpus": 0},
        "seed": 0,
        "confirm": {"top": confirm_top, "seeds": confirm_seeds},
    }


def run_sweep(folder: Path, seconds: float, table: str, **confirm: Any) -> dict[str, Any]:
    csv = (write_csv if table == "breast_cancer" else write_digits_csv)(folder / f"{table}.csv")
    space = folder / "tabular_bench.yaml"
    space.write_text(yaml.safe_dump(bench_space(csv, table, **confirm)))
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "sweeps.launch", "--space", str(space), "--time-budget", str(seconds),
            "--trials", "100000", "--num-cpus", "2", "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
            "--results-dir", str(folder / "results"),
        ],
        cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("dpsweep")
    runs = client.search_runs([experiment.experiment_id], max_results=50000)
    (parent,) = [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]
    trained = [r for r in trials if r.data.tags.get("dpsweep.outcome") != "skipped_over_budget"]
    epochs = sum(len(client.get_metric_history(r.info.run_id, "val_accuracy")) for r in trained)
    (sweep,) = [p for p in (folder / "results").iterdir() if p.is_dir()]
    units = [p for p in sweep.iterdir() if p.is_dir() and (p / "params.json").exists()]  # Ray Tune's trials
    metrics = parent.data.metrics
    best = json.loads((sweep / "frontier" / "best_per_epsilon.json").read_text())
    return {
        "wall_seconds": wall,
        "trials_trained": len(trained),
        "tune_units": len(units),
        "trials_per_unit": len(trained) / max(len(units), 1),
        "trial_epochs": epochs,
        "trial_epochs_per_second": epochs / wall,
        "train_share": metrics["train_share"],
        "launcher_time_split": {k: v for k, v in metrics.items() if k.endswith(("_share", "_seconds"))},
        "reported": [b for b in best if b.get("test_accuracy_mean") is not None],
    }


def retrain(reported: list[dict[str, Any]], seeds: int, folder: Path, jobs: int = 1) -> list[dict[str, Any]]:
    """Each reported configuration trained ``seeds`` times by ``python -m dp_core.train --config``, fresh seeds,
    ``jobs`` processes at a time (each is one process, its own fresh seed, whatever runs beside it)."""

    def train_once(config: Path, out: Path) -> float:
        done = subprocess.run(
            [sys.executable, "-m", "dp_core.train", "--config", str(config), "--metrics-json", str(out)],
            cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"retraining failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())["test_accuracy"]

    rows = []
    for chosen in reported:
        config = folder / f"best-{chosen['epsilon_at_most']:g}.yaml"
        config.write_text(yaml.safe_dump(chosen["train_config"]))
        outs = [folder / f"retrain-{chosen['epsilon_at_most']:g}-{run}.json" for run in range(seeds)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            accuracies = list(pool.map(functools.partial(train_once, config), outs))
        mean = statistics.fmean(accuracies)
        rows.append(
            {
                "epsilon_at_most": chosen["epsilon_at_most"],
                "epsilon": chosen["epsilon"],
                "reported": chosen["test_accuracy_mean"],
                "reported_std": chosen["test_accuracy_std"],
                "retrained_mean": mean,
                "retrained_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
                "retrained_runs": accuracies,
                "gap_points": 100 * (chosen["test_accuracy_mean"] - mean),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="the sweep's --time-budget (default 150)")
    parser.add_argument("--seeds", type=int, default=5, help="fresh seeds per retrained configuration (default 5)")
    parser.add_argument("--table", choices=("breast_cancer", "digits"), default="breast_cancer",
                        help="the CSV file swept: the example's (569 rows) or digits' (1797 rows)")  # fmt: skip
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--as-digits-truth", action="store_true",
                        help="confirm as bench/spaces/digits_truth.yaml: top 4, 8 seeds, 20 %% validation")  # fmt: skip
    parser.add_argument("--confirm-seeds", type=int, default=None,
                        help="seeds of the confirmation stage and of the refit (default 3; 8 with --as-digits-truth): "
                        "a reported mean of more refit runs has a smaller standard error")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1,
                        help="retraining processes at a time (default 1; 2 on 2 cores halves the wait)")  # fmt: skip
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        confirm = {"confirm_top": 4, "confirm_seeds": 8, "validation_fraction": 0.2} if args.as_digits_truth else {}
        if args.confirm_seeds is not None:
            confirm["confirm_seeds"] = args.confirm_seeds
        sweep = run_sweep(Path(tmp), args.seconds, args.table, **confirm)
        sweep["retrained"] = retrain(sweep.pop("reported"), args.seeds, Path(tmp), jobs=args.jobs)
    result = {
        "benchmark": f"own CSV data: tabular_mlp on {args.table}, Optuna under --time-budget, then retrained",
        "table": args.table,
        "date": time.strftime("%Y-%m-%d"),
        "search_seconds": args.seconds,
        "seeds": args.seeds,
        "retrain_jobs": args.jobs,
        "confirmation": bench_space(Path("-"), args.table, **confirm)["confirm"],
        "validation_fraction": confirm.get("validation_fraction", 0.1),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },  # fmt: skip
        "load_average": {"before": load_before, "after": os.getloadavg()},  # other jobs on the machine
        "accountant": "PRV",
        "delta": 1.0e-4,
        **sweep,
    }
    tag = f"-{args.tag}" if args.tag else ""
    name = f"own-data-{args.table}-cpu{os.cpu_count()}-{result['date']}{tag}.json"
    out = ROOT / "bench" / "results" / name
    out.write_text(json.dumps(result, indent=2, default=str))
    print(
        f"{sweep['trials_trained']} trials in {sweep['tune_units']} units of work ({sweep['trials_per_unit']:.1f} per "
        f"unit), {sweep['trial_epochs_per_second']:.1f} trial-epochs/s, train_share {100 * sweep['train_share']:.1f} % "
        f"(wall {sweep['wall_seconds']:.0f} s with confirmation)"
    )
    print(f"{'ε ≤':>4}  {'reported':>8}  {'retrained':>17}  {'gap (points)':>12}")
    for row in sweep["retrained"]:
        std = row["retrained_std"] if row["retrained_std"] is not None else float("nan")
        print(
            f"{row['epsilon_at_most']:>4g}  {row['reported']:>8.4f}  {row['retrained_mean']:.4f} ± {std:.4f}  "
            f"{row['gap_points']:>+12.2f}"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
