"""``python -m sweeps.bench``: dpsweep against the standard Ray Tune + Optuna + MLflow pattern.

Both sides search the same space (``bench/spaces/digits_bench.yaml``: the MLP on digits, 20
epochs, batch 128, δ = 1e-5, target ε / C / lr ranges) with Optuna for the same wall time on
the same machine, one after the other in one run. The standard side is written the way a new
user would write it from the libraries' docs: a function trainable that builds its data,
model and Opacus ``make_private_with_epsilon`` per trial and reports test accuracy and
``get_epsilon`` every epoch, under ``Tuner`` + ``OptunaSearch`` + ``ASHAScheduler`` +
``MLflowLoggerCallback``. Printed and written to ``bench/results/sweep-throughput-*.json``:
trials finished, trial-epochs per second, train share of slot time, best accuracy at ε ≤ 1, 3, 8.

Trial-epochs per second divide by each side's whole wall time (dpsweep's: its launcher process,
start to exit). The train share is of the slots' time from the trials' start to their end: for
the standard side, ``Tuner.fit`` after ``ray.init``; for dpsweep, the split its launcher records
on the sweep's MLflow run (after ``ray.init`` until every trial is over and logged). dpsweep's
share of its whole process is printed as well.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "bench" / "spaces" / "digits_bench.yaml"
BUCKETS = (1.0, 3.0, 8.0)


def standard_trainable_run(config: dict[str, Any], *, report: Any = None, stop_epoch: int | None = None) -> float:
    """The per-trial function as commonly written: everything built inside, PRV ε every epoch.

    ``report`` gets each epoch's metrics (Ray Tune's ``tune.report``); returns the test accuracy
    after ``stop_epoch`` (default: the last), so a chosen point can be trained again the same way.
    """
    import torch
    from opacus import PrivacyEngine
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.set_num_threads(1)
    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images / 16.0, labels, test_size=0.2, stratify=labels, random_state=0
    )
    mean, std = x_train.mean(), x_train.std()
    to_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    train_set = torch.utils.data.TensorDataset(to_x(x_train), torch.tensor(y_train))
    x_test_t, y_test_t = to_x(x_test), torch.tensor(y_test)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config["batch_size"], shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    engine = PrivacyEngine(accountant="prv")
    model, optimizer, loader = engine.make_private_with_epsilon(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        target_epsilon=config["target_epsilon"],
        target_delta=config["delta"],
        epochs=config["epochs"],
        max_grad_norm=config["max_grad_norm"],
    )
    accuracy = math.nan
    for epoch in range(1, (stop_epoch or config["epochs"]) + 1):
        started = time.perf_counter()
        model.train()
        for x, y in loader:
            if len(x) == 0:
                continue
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        epoch_seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test_t).argmax(1) == y_test_t).float().mean().item()
        if report is not None:
            report(
                {
                    "test_accuracy": accuracy,
                    "epsilon": engine.get_epsilon(config["delta"]),
                    "epoch": epoch,
                    "epoch_seconds": epoch_seconds,
                }
            )
    return accuracy


def _standard_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    standard_trainable_run(config, report=tune.report)


def _fit_standard(space: dict[str, Any], *, seconds: float, workdir: Path) -> tuple[Any, float]:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    fixed, axes = space["fixed"], space["axes"]
    param_space: dict[str, Any] = {k: fixed[k] for k in ("epochs", "batch_size", "delta") if k in fixed}
    for key, axis in axes.items():
        if not isinstance(axis, dict):
            param_space[key] = tune.choice(axis)
        elif isinstance(axis["low"], int) and isinstance(axis["high"], int):
            param_space[key] = tune.lograndint(axis["low"], axis["high"] + 1)  # an integer axis (batch size)
        else:
            param_space[key] = tune.loguniform(axis["low"], axis["high"])
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    started = time.monotonic()  # as dpsweep's own split: from the trials' start to their end
    tuner = tune.Tuner(
        tune.with_resources(_standard_trainable, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="test_accuracy", mode="max", seed=0),
            scheduler=ASHAScheduler(metric="test_accuracy", mode="max", max_t=fixed["epochs"], grace_period=5),
            num_samples=-1,
            time_budget_s=seconds,
        ),
        run_config=tune.RunConfig(
            storage_path=str(workdir / "ray"),
            verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{workdir}/mlflow.db", experiment_name="standard")],
        ),
    )
    results = tuner.fit()
    wall = time.monotonic() - started
    ray.shutdown()
    return results, wall


def run_standard_points(space: dict[str, Any], *, seconds: float, workdir: Path) -> list[dict[str, Any]]:
    """Every (trial, epoch) the standard pattern reached in ``seconds``, with its trial's config."""
    results, _ = _fit_standard(space, seconds=seconds, workdir=workdir)
    points = []
    for index, result in enumerate(results):
        history = result.metrics_dataframe
        if history is None or history.empty:
            continue
        config = {k: result.config[k] for k in ("epochs", "batch_size", "delta", *space["axes"])}
        points += [
            {
                "trial": index,
                "epoch": int(row["epoch"]),
                "epsilon": float(row["epsilon"]),
                "test_accuracy": float(row["test_accuracy"]),
                "config": config,
            }
            for _, row in history.iterrows()
        ]
    return points


def run_standard(space: dict[str, Any], *, seconds: float, workdir: Path) -> dict[str, Any]:
    fixed = space["fixed"]
    results, wall = _fit_standard(space, seconds=seconds, workdir=workdir)
    points, train_seconds, epochs, finished = [], 0.0, 0, 0
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            continue
        finished += int(result.metrics.get("epoch", 0) >= fixed["epochs"] or result.metrics.get("done", False))
        epochs += len(history)
        train_seconds += float(history["epoch_seconds"].sum())
        points += list(zip(history["epsilon"], history["test_accuracy"]))
    return _summary(
        points=points,
        wall=wall,
        train_seconds=train_seconds,
        epochs=epochs,
        trials=len(results),
        finished=finished,
        slots=2,
    )


def run_dpsweep(*, seconds: float, workdir: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(SPACE),
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
        raise RuntimeError(f"dpsweep failed:\n{done.stdout}\n{done.stderr}")
    from sweeps.tracking import SweepTracker

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("dpsweep")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`dpsweep.role` = 'sweep'")[0]
    tracker = SweepTracker(tracking_uri=f"sqlite:///{workdir}/mlflow.db", experiment="dpsweep")
    tracker.parent_run_id = parent.info.run_id
    children = [r for r in tracker.trial_runs() if r.data.tags.get("dpsweep.outcome") != "skipped_over_budget"]
    points = [(p.epsilon, p.accuracy) for p in tracker.points()]
    metrics = parent.data.metrics
    finished = sum(r.data.tags.get("dpsweep.outcome") == "completed" for r in children)
    summary = _summary(
        points=points,
        wall=wall,
        train_seconds=metrics["train_seconds"],
        epochs=len(points),
        trials=len(children),
        finished=finished,
        slots=metrics["slots"],
    )
    # train_share as the sweep records it (trials' start to end, as the standard side's is
    # measured); the share of the whole launcher process, start-up and reports included, is kept too.
    summary["process_train_share"] = summary["train_share"]
    summary["train_share"] = metrics["train_share"]
    summary["launcher_time_split"] = {k: metrics[k] for k in metrics if k.endswith(("_share", "_seconds"))}
    # The search's points are validation accuracies; what dpsweep reports per bound is the confirmed
    # configuration's test accuracy (mean over fresh seeds).
    summary["best_accuracy"] = {
        f"eps_le_{b:g}": metrics.get(f"confirmed_test_accuracy_mean.eps_le_{b:g}") for b in BUCKETS
    }
    return summary


def _summary(
    *, points: list, wall: float, train_seconds: float, epochs: int, trials: int, finished: int, slots: float
) -> dict[str, Any]:
    best = {f"eps_le_{b:g}": max((a for e, a in points if math.isfinite(e) and e <= b), default=None) for b in BUCKETS}
    return {
        "wall_seconds": wall,
        "trials_started": trials,
        "trials_finished": finished,
        "trial_epochs": epochs,
        "trial_epochs_per_second": epochs / wall,
        "train_share": train_seconds / (wall * slots),
        "best_accuracy": best,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="wall time each side gets (default 180)")
    args = parser.parse_args(argv)
    space = yaml.safe_load(SPACE.read_text())
    with tempfile.TemporaryDirectory() as folder:
        standard_dir, dpsweep_dir = Path(folder) / "standard", Path(folder) / "dpsweep"
        standard_dir.mkdir()
        dpsweep_dir.mkdir()
        # Each side in its own process and Ray instance, one after the other, same budget.
        standard = run_standard(space, seconds=args.seconds, workdir=standard_dir)
        dpsweep = run_dpsweep(seconds=args.seconds, workdir=dpsweep_dir)
    ratio = dpsweep["trial_epochs_per_second"] / standard["trial_epochs_per_second"]
    result = {
        "benchmark": "sweep throughput, digits_bench space, Optuna, same wall time",
        "date": time.strftime("%Y-%m-%d"),
        "seconds_each": args.seconds,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "standard_pattern": standard,
        "dpsweep": dpsweep,
        "trial_epochs_per_second_ratio": ratio,
    }
    out = ROOT / "bench" / "results" / f"sweep-throughput-cpu{os.cpu_count()}-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'':34}{'standard':>12}{'dpsweep':>12}")
    for key in ("trials_started", "trials_finished", "trial_epochs", "trial_epochs_per_second", "train_share"):
        print(f"{key:34}{standard[key]:>12.3g}{dpsweep[key]:>12.3g}")
    for bucket in standard["best_accuracy"]:
        s, d = standard["best_accuracy"][bucket], dpsweep["best_accuracy"][bucket]
        print(
            f"{'best accuracy ' + bucket.replace('eps_le_', 'ε ≤ '):34}{s if s is not None else float('nan'):>12.4f}"
            f"{d if d is not None else float('nan'):>12.4f}"
        )
    print(f"{'train share of the launcher process':34}{'':>12}{dpsweep['process_train_share']:>12.3g}")
    print(f"trial-epochs/s ratio dpsweep/standard: {ratio:.2f}x   (ε: PRV accountant, δ = 1e-5)   → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
