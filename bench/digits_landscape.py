"""How much is there to find? Digits MLP configurations at one ε, each trained with fresh seeds.

``python bench/digits_landscape.py --epsilon 3 [--seeds 6] [--validation-fraction 0.1]`` trains every
configuration of a grid over C, lr, batch size, epochs, momentum and lr schedule (σ calibrated to
spend the ε exactly, PRV, δ = 1e-5) ``--seeds`` times, and prints the configurations by mean test
accuracy, with the trainer's defaults (C 0.5, lr 2, batch 256, 20 epochs, no momentum) and
their rank. It is what tells whether "the sweep beats the defaults by a point" can be met at
all in a given space: if the best configuration of the space is within a point of the defaults,
no selection can. Results to ``bench/results/digits-landscape-*.json``.

The top of such a list is itself a maximum over noisy means, so read it as "about this much",
not as one configuration's figure (the standard error of each mean is in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.protocol import ConfirmationJob  # noqa: E402
from sweeps.workers.confirmation import train_jobs  # noqa: E402

DEFAULTS = {
    "max_grad_norm": 0.5,
    "lr": 2.0,
    "batch_size": 256,
    "epochs": 20,
    "momentum": 0.0,
    "lr_schedule": "constant",
}


def grid() -> list[dict]:
    """Plain SGD over C × lr × batch × epochs (digits_truth's axes and epochs), then momentum 0.9
    (lr a tenth) and a cosine schedule over a coarser C × lr and longer runs."""
    plain = [
        {"max_grad_norm": c, "lr": lr, "batch_size": b, "epochs": e, "momentum": 0.0, "lr_schedule": "constant"}
        for c, lr, b, e in itertools.product([0.25, 0.5, 1.0, 2.0], [1.0, 2.0, 3.0], [128, 256, 512], [10, 20])
    ]
    wider = [
        {
            "max_grad_norm": c,
            "lr": lr * (0.1 if m else 1.0),
            "batch_size": b,
            "epochs": e,
            "momentum": m,
            "lr_schedule": s,
        }
        for c, lr, b, e, m, s in itertools.product(
            [0.5, 1.0], [1.0, 2.0, 4.0], [256, 512, 1024], [40, 80], [0.0, 0.9], ["constant", "cos"]
        )
    ]
    return [DEFAULTS, *[g for g in plain + wider if g != DEFAULTS]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    base = {
        "dataset": "digits",
        "model": "mlp",
        "optimizer": "sgd",
        "delta": 1e-5,
        "accountant": "prv",
        "validation_fraction": args.validation_fraction,
        "target_epsilon": args.epsilon,
    }
    started, rows = time.monotonic(), []
    for values in grid():
        jobs = [
            ConfirmationJob(
                name=f"seed{i}",
                trial="landscape",
                epoch=values["epochs"],
                bound=args.epsilon,
                seed_index=i,
                train={**base, **values, "seed": secrets.randbits(62)},
            )
            for i in range(args.seeds)
        ]
        measured = train_jobs(jobs)
        tests = [r.test_accuracy for r in measured]
        vals = [r.val_accuracy for r in measured]
        rows.append(
            {
                **values,
                "test_mean": statistics.fmean(tests),
                "test_std": statistics.stdev(tests),
                "val_mean": statistics.fmean(vals) if args.validation_fraction else None,
                "epsilon": max(r.epsilon for r in measured),
            }
        )
    ranked = sorted(rows, key=lambda r: -r["test_mean"])
    default_rank = next(i for i, r in enumerate(ranked) if all(r[k] == v for k, v in DEFAULTS.items()))
    result = {
        "benchmark": "digits landscape: configurations at one ε, fresh seeds",
        "date": time.strftime("%Y-%m-%d"),
        "epsilon": args.epsilon,
        "delta": 1e-5,
        "accountant": "PRV",
        "seeds": args.seeds,
        "validation_fraction": args.validation_fraction,
        "seconds": time.monotonic() - started,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "defaults_rank": default_rank + 1,
        "configurations": ranked,
    }
    tag = f"-{args.tag}" if args.tag else ""
    out = ROOT / "bench" / "results" / f"digits-landscape-eps{args.epsilon:g}-{result['date']}{tag}.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{len(rows)} configurations × {args.seeds} seeds at ε = {args.epsilon:g} (δ = 1e-5, PRV), validation "
        f"{args.validation_fraction:g}, in {result['seconds']:.0f} s; test accuracy mean ± std:"
    )
    for i, r in enumerate(ranked[:10]):
        print(
            f"  {i + 1:>3}. {r['test_mean']:.4f} ± {r['test_std']:.4f}  C={r['max_grad_norm']:g} lr={r['lr']:g} "
            f"batch={r['batch_size']} epochs={r['epochs']} momentum={r['momentum']:g} {r['lr_schedule']}"
        )
    d = ranked[default_rank]
    print(
        f"  trainer defaults: {d['test_mean']:.4f} ± {d['test_std']:.4f}, rank {default_rank + 1} of {len(rows)}; "
        f"best − defaults = {100 * (ranked[0]['test_mean'] - d['test_mean']):+.1f} points"
    )
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
