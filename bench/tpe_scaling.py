"""How Optuna's TPE cost per suggestion grows with the study, for a dpsweep-shaped study.

Three log-uniform parameters (target ε, C, lr, as in ``bench/spaces/digits_bench.yaml``); four
trials in five pruned after their first rung, the rest completed; in-memory storage, so only the
sampler is timed. At each study size, the mean time of 20 asks (three suggestions each).

    python bench/tpe_scaling.py        # prints a table, writes bench/results/tpe-scaling-<date>.json
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from pathlib import Path

import optuna

SIZES = (500, 1000, 2000, 4000)


def _ask(study: optuna.Study) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("target_epsilon", 0.5, 8.0, log=True)
    trial.suggest_float("max_grad_norm", 0.25, 4.0, log=True)
    trial.suggest_float("lr", 0.3, 4.0, log=True)
    return trial


def main() -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    rng = random.Random(0)
    rows = []
    for size in SIZES:
        while len(study.trials) < size:
            trial = _ask(study)
            trial.report(rng.random(), 5)
            if rng.random() < 0.8:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                trial.report(rng.random(), 15)
                study.tell(trial, rng.random())
        started = time.perf_counter()
        for _ in range(20):
            study.tell(_ask(study), state=optuna.trial.TrialState.PRUNED)
        rows.append({"trials": size, "ms_per_suggestion": (time.perf_counter() - started) / 20 * 1000})
        print(f"{size:6d} trials: {rows[-1]['ms_per_suggestion']:6.1f} ms per suggestion (ask + 3 parameters)")
    out = Path(__file__).resolve().parent / "results" / f"tpe-scaling-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps({"benchmark": "Optuna TPE cost per suggestion vs study size", "optuna": optuna.__version__,
                               "machine": {"processor": platform.processor() or platform.machine(),
                                           "cpus": os.cpu_count(), "python": platform.python_version()},
                               "results": rows}, indent=2))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
