"""Optuna's TPE cost per suggestion vs study size, refitted per suggestion and fitted once per pack.

A dpsweep-shaped study: three log-uniform parameters (target ε, C, lr, as in
``bench/spaces/digits_bench.yaml``); four trials in five pruned after their first rung, the rest
completed; 50 trials left running (the packs in flight); in-memory storage, so only the sampler
is timed. At each study size, identically seeded studies with the same history are asked for one pack
of ``PACK`` configurations: Optuna's TPESampler (one fit per suggestion), dpsweep's
:class:`sweeps.driver.batch_tpe.BatchTPESampler` inside ``one_fit`` (one fit per pack), and, for the
record of a design choice, a BatchTPESampler that only caches the estimators and lets Optuna's
``_sample`` split the trials for every suggestion (``estimators_only``).

Each figure is wall time and this process's CPU time per suggestion; on a machine that other
jobs share, the CPU time is the steadier of the two (the load average is written down too).

    python bench/tpe_scaling.py --machine "2-core dev VM"   # prints a table, writes
                                                            # bench/results/tpe-scaling-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweeps.driver.batch_tpe import BatchTPESampler  # noqa: E402


class _EstimatorsOnly(BatchTPESampler):
    """The estimators cached per pack, Optuna's own ``_sample`` (trial split included) per suggestion."""

    _sample = optuna.samplers.TPESampler._sample


SIZES = (500, 1000, 2000, 4000)
PACK = 48  # configurations of one digits pack (sweeps.planning.packing.AUTO_PACK_SIZE's rounds)
RUNNING = 50


def _ask(study: optuna.Study) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("target_epsilon", 0.5, 8.0, log=True)
    trial.suggest_float("max_grad_norm", 0.25, 4.0, log=True)
    trial.suggest_float("lr", 0.3, 4.0, log=True)
    return trial


def _grow(study: optuna.Study, rng: random.Random, count: int) -> None:
    for _ in range(count):
        trial = _ask(study)
        trial.report(rng.random(), 5)
        if rng.random() < 0.8:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.report(rng.random(), 15)
            study.tell(trial, rng.random())


def _time_pack(study: optuna.Study) -> tuple[float, float]:
    """Wall and CPU seconds to ask one pack; the pack's trials are then told pruned (as most are)."""
    sampler = study.sampler
    started, cpu_started = time.perf_counter(), time.process_time()
    if isinstance(sampler, BatchTPESampler):
        with sampler.one_fit():
            pack = [_ask(study) for _ in range(PACK)]
    else:
        pack = [_ask(study) for _ in range(PACK)]
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    for trial in pack:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return seconds, cpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default=platform.node(), help="what the machine is, for the JSON")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    studies = {
        "per_suggestion": optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)),
        "per_pack": optuna.create_study(direction="maximize", sampler=BatchTPESampler(seed=0)),
        "estimators_only": optuna.create_study(direction="maximize", sampler=_EstimatorsOnly(seed=0)),
    }
    rngs = {name: random.Random(0) for name in studies}
    grown = 0
    rows = []
    for size in SIZES:
        row: dict[str, float] = {"trials": size}
        for name, study in studies.items():
            _grow(study, rngs[name], size - grown)
            running = [_ask(study) for _ in range(RUNNING)]
            wall, cpu = _time_pack(study)
            row[f"ms_per_suggestion_{name}"] = wall / PACK * 1000
            row[f"cpu_ms_per_suggestion_{name}"] = cpu / PACK * 1000
            for trial in running:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        grown = size + RUNNING + PACK
        row["ratio"] = row["ms_per_suggestion_per_suggestion"] / row["ms_per_suggestion_per_pack"]
        row["cpu_ratio"] = row["cpu_ms_per_suggestion_per_suggestion"] / row["cpu_ms_per_suggestion_per_pack"]
        row["cpu_ratio_estimators_only"] = (
            row["cpu_ms_per_suggestion_per_suggestion"] / row["cpu_ms_per_suggestion_estimators_only"]
        )
        rows.append(row)
        print(
            f"{size:6d} trials, CPU ms per suggestion: {row['cpu_ms_per_suggestion_per_suggestion']:6.1f} fitted per "
            f"suggestion, {row['cpu_ms_per_suggestion_per_pack']:5.2f} fitted once per pack of {PACK} "
            f"({row['cpu_ratio']:.1f}x), {row['cpu_ms_per_suggestion_estimators_only']:5.2f} estimators only "
            f"({row['cpu_ratio_estimators_only']:.1f}x); wall {row['ratio']:.1f}x",
            flush=True,
        )
    out = Path(__file__).resolve().parent / "results" / f"tpe-scaling-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "Optuna TPE cost per suggestion vs study size: one fit per suggestion vs one per pack",
                "optuna": optuna.__version__,
                "pack": PACK,
                "running_trials": RUNNING,
                "machine": {
                    "name": args.machine,
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
                },
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
