"""Wall time of planning a trial's privacy: Opacus as a user would call it vs dp_core.privacy_plan.plan_privacy.

Run ``python bench/accounting_bench.py``. The work is what a sweep does before each trial with a
target ε: calibrate σ for the planned steps, then ε after every epoch (PRV accountant, δ = 1e-5).

* Opacus: ``opacus.accountants.utils.get_noise_multiplier(..., accountant="prv")`` (its defaults:
  bisection to ε within 0.01 of the target), then a ``PRVAccountant`` whose history is set to each
  epoch end in turn and ``get_epsilon(delta)``: one PRV discretization per call.
* ours: ``plan_privacy(config, train_size=N)``, which calls ``accounting.noise_multiplier_for`` and
  ``accounting.epsilons`` (one discretization per pass for all epochs). Its lru caches are
  cleared before every repeat, so each repeat is a new trial's cold start.

Configurations: digits as the sweeps use it (batch 128 of 1437, 20 epochs of int(1437/128) = 11
steps) at several target ε, and an MNIST-sized one (batch 256 of 60000, 10 epochs of 234 steps).
Both sides run in one process, interleaved (the order alternates between repeats) so that load from
other jobs on the machine hits both alike; imports are warmed up first; BLAS gets one thread (one
sweep slot; Opacus' discretization calls np.dot, whose idle OpenBLAS threads would otherwise spin
on the CPU clock of whichever side runs next). The median of the repeats
is reported, wall and CPU (``process_time``) time, with the ratio Opacus / ours. Prints a table and
writes ``bench/results/accounting-cpu-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import opacus
import scipy
import threadpoolctl
from opacus.accountants import PRVAccountant
from opacus.accountants.utils import get_noise_multiplier

from dp_core import accounting
from dp_core.config import TrainConfig
from dp_core.privacy_plan import PrivacyPlan, plan_privacy

RESULTS = Path(__file__).resolve().parent / "results"

# (name, train size N, batch size, epochs, target ε)
CONFIGS = [
    ("digits", 1437, 128, 20, 0.5),
    ("digits", 1437, 128, 20, 1.0),
    ("digits", 1437, 128, 20, 2.0),
    ("digits", 1437, 128, 20, 4.0),
    ("digits", 1437, 128, 20, 8.0),
    ("mnist", 60000, 256, 10, 2.0),
]
DELTA = 1e-5


def opacus_plan(*, sample_rate: float, epoch_ends: list[int], target_epsilon: float) -> tuple[float, list[float]]:
    """σ for the planned steps and ε after every epoch, with Opacus' public API."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Optimal order is the largest alpha" from its RDP domain bound
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=DELTA,
            sample_rate=sample_rate,
            steps=epoch_ends[-1],
            accountant="prv",
        )
        accountant = PRVAccountant()
        by_epoch = []
        for steps in epoch_ends:
            accountant.history = [(sigma, sample_rate, steps)]
            by_epoch.append(float(accountant.get_epsilon(delta=DELTA)))
    return float(sigma), by_epoch


def clear_accounting_caches() -> None:
    """Empty every lru cache of dp_core's accounting: the next plan starts cold, like a new trial's."""
    accounting.clear_caches()


def timed(work: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl)")
    args = parser.parse_args()
    with threadpoolctl.threadpool_limits(limits=args.threads):
        run(repeats=args.repeats, threads=args.threads)


def run(*, repeats: int, threads: int) -> None:
    """Time both sides on every configuration, print the table, write the JSON report."""
    # Warm-up: the first call of each side pays for importing torch (via Opacus) and scipy modules.
    opacus_plan(sample_rate=0.1, epoch_ends=[10, 20], target_epsilon=4.0)
    warm = TrainConfig.from_dict({"dataset": "digits", "batch_size": 128, "epochs": 2, "target_epsilon": 4.0})
    plan_privacy(warm, train_size=1437)

    load_at_start = os.getloadavg()[0]
    rows = []
    header = (
        f"{'config':<8} {'ε target':>8} {'steps':>6} {'σ opacus':>9} {'σ ours':>8} {'ε ours':>7} "
        f"{'opacus s':>9} {'ours s':>7} {'speedup':>8} {'opacus cpu':>10} {'ours cpu':>8} {'speedup':>8}"
    )
    print(
        f"PRV accountant, δ = {DELTA:g}, median of {repeats}, {threads} BLAS thread(s); "
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {load_at_start:.2f} at start"
    )
    print(header)
    for name, train_size, batch_size, epochs, target in CONFIGS:
        config = TrainConfig.from_dict(
            {
                "dataset": name,
                "batch_size": batch_size,
                "epochs": epochs,
                "accountant": "prv",
                "target_epsilon": target,
                "delta": DELTA,
            }
        )
        sample_rate = config.resolved_sample_rate(train_size)
        steps_per_epoch = config.steps_per_epoch(train_size)
        epoch_ends = [steps_per_epoch * (epoch + 1) for epoch in range(epochs)]
        times: dict[str, list[tuple[float, float]]] = {"opacus": [], "ours": []}
        results: dict[str, object] = {}
        for repeat in range(repeats):
            for side in ("opacus", "ours") if repeat % 2 == 0 else ("ours", "opacus"):
                if side == "opacus":
                    work = functools.partial(
                        opacus_plan, sample_rate=sample_rate, epoch_ends=epoch_ends, target_epsilon=target
                    )
                else:
                    clear_accounting_caches()
                    work = functools.partial(plan_privacy, config, train_size=train_size)
                wall, cpu, results[side] = timed(work)
                times[side].append((wall, cpu))
        opacus_sigma, opacus_by_epoch = results["opacus"]  # type: ignore[misc]
        plan = results["ours"]
        assert isinstance(plan, PrivacyPlan) and plan.epsilon <= target, plan
        row: dict[str, object] = {
            "config": name,
            "train_size": train_size,
            "batch_size": batch_size,
            "epochs": epochs,
            "sample_rate": sample_rate,
            "steps": epoch_ends[-1],
            "target_epsilon": target,
            "opacus_noise_multiplier": opacus_sigma,
            "ours_noise_multiplier": plan.noise_multiplier,
            "opacus_epsilon_by_epoch": opacus_by_epoch,
            "ours_epsilon_by_epoch": list(plan.epsilon_by_epoch),
        }
        for clock, index in (("wall", 0), ("cpu", 1)):
            theirs = statistics.median(t[index] for t in times["opacus"])
            ours = statistics.median(t[index] for t in times["ours"])
            row |= {
                f"opacus_{clock}_s": theirs,
                f"ours_{clock}_s": ours,
                f"speedup_{clock}": theirs / ours,
                f"all_opacus_{clock}_s": [t[index] for t in times["opacus"]],
                f"all_ours_{clock}_s": [t[index] for t in times["ours"]],
            }
        rows.append(row)
        print(
            f"{name:<8} {target:>8g} {epoch_ends[-1]:>6} {opacus_sigma:>9.4f} {plan.noise_multiplier:>8.4f} "
            f"{plan.epsilon:>7.4f} {row['opacus_wall_s']:>9.3f} {row['ours_wall_s']:>7.3f} "
            f"{row['speedup_wall']:>7.1f}x {row['opacus_cpu_s']:>10.3f} {row['ours_cpu_s']:>8.3f} "
            f"{row['speedup_cpu']:>7.1f}x"
        )

    today = datetime.date.today().isoformat()
    report = {
        "benchmark": "accounting_bench",
        "date": today,
        "setup": {
            "accountant": "prv",
            "delta": DELTA,
            "repeats": repeats,
            "blas_threads": threads,
            "opacus": "get_noise_multiplier(accountant='prv', defaults) + PRVAccountant.get_epsilon per epoch",
            "ours": "dp_core.privacy_plan.plan_privacy, lru caches cleared before each repeat",
        },
        "machine": {
            "cpu": cpu_model(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "opacus": opacus.__version__,
        },
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"accounting-cpu-{today}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
