"""Wall time of K configurations trained together (train_vectorized) vs one after another (train).

Run ``python bench/vectorized_bench.py``: digits, mlp, 20 epochs, expected batch 128, K ∈ {1, 4, 8}
configurations differing in lr, σ, C, momentum and seed; one thread (one sweep slot). Privacy
plans are computed once, before timing, and passed to both sides: planning is the same work
either way and is not what vectorising speeds up. Both sides run in the same process,
interleaved (the order alternates between repeats) so that load from other jobs on the machine
hits both alike; the median of the repeats is reported, with the ratio sequential / vectorised.
Prints a table and writes ``bench/results/vectorized-<device>-<date>.json``.

``--dataset`` and ``--device`` run the same comparison elsewhere, e.g. CNN packs on a GPU
(``--dataset synthetic_cifar10_full --model cifar_cnn --device cuda``, as ``bench/gpu_check.py`` does).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from dp_core.config import TrainConfig
from dp_core.data import load_dataset
from dp_core.engines import choose_engine
from dp_core.models import build_model
from dp_core.privacy_plan import plan_privacy
from dp_core.train import train
from dp_core.vectorized import train_vectorized

RESULTS = Path(__file__).resolve().parent / "results"


def configs_for(
    group_size: int, *, epochs: int, model: str = "mlp", dataset: str = "digits", device: str = "cpu"
) -> list[TrainConfig]:
    """``group_size`` configurations of a typical sweep: same model and sampling, other numbers."""
    lrs, sigmas, clips, momenta = (0.5, 1.0, 2.0, 4.0), (0.8, 1.0, 1.5), (0.5, 1.0, 2.0), (0.0, 0.5, 0.9)
    return [
        TrainConfig.from_dict(
            {
                "dataset": dataset,
                "model": model,
                "epochs": epochs,
                "batch_size": 128,
                "device": device,
                "accountant": "rdp",
                "lr": lrs[k % 4],
                "noise_multiplier": sigmas[k % 3],
                "max_grad_norm": clips[(k // 3) % 3],
                "momentum": momenta[(k // 2) % 3],
                "seed": k,
            }
        )
        for k in range(group_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="mlp", help="digits_cnn takes the per-example route (no ghost clipping)")
    parser.add_argument("--dataset", default="digits", help="any dataset of dp_core.data (default: digits)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes (default: bench/results)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook")  # Opacus on the first layer; harmless

    data = load_dataset(args.dataset)
    groups = {
        k: configs_for(k, epochs=args.epochs, model=args.model, dataset=args.dataset, device=args.device)
        for k in args.groups
    }
    plans = {k: [plan_privacy(c, train_size=len(data.train)) for c in configs] for k, configs in groups.items()}

    def sequential(k: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for config, plan in zip(groups[k], plans[k]):
            train(config, data=data, plan=plan)
        return time.perf_counter() - wall, time.process_time() - cpu

    def vectorised(k: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        train_vectorized(groups[k], data=data, plans=plans[k])
        return time.perf_counter() - wall, time.process_time() - cpu

    vectorised(min(args.groups))  # warm-up: first calls pay for lazy imports and allocator growth
    sequential(min(args.groups))
    # (wall, CPU) seconds per repeat. CPU time (process_time) is what this process itself used: on a
    # machine shared with other jobs it moves less than wall time, so both are reported.
    times: dict[int, dict[str, list[tuple[float, float]]]] = {
        k: {"sequential": [], "vectorized": []} for k in args.groups
    }
    for repeat in range(args.repeats):
        for k in args.groups:
            order = ("sequential", "vectorized") if (repeat + k) % 2 == 0 else ("vectorized", "sequential")
            for side in order:
                times[k][side].append(sequential(k) if side == "sequential" else vectorised(k))

    rows = []
    print(
        f"{args.dataset} {args.model} on {args.device}, {args.epochs} epochs, batch 128, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print(
        f"{'K':>3} {'seq wall s':>11} {'vec wall s':>11} {'speedup':>8} {'seq cpu s':>10} {'vec cpu s':>10} "
        f"{'speedup':>8}"
    )
    for k in args.groups:
        row: dict[str, object] = {"group_size": k}
        for clock, index in (("wall", 0), ("cpu", 1)):
            seq = statistics.median(t[index] for t in times[k]["sequential"])
            vec = statistics.median(t[index] for t in times[k]["vectorized"])
            row |= {
                f"sequential_{clock}_s": seq,
                f"vectorized_{clock}_s": vec,
                f"speedup_{clock}": seq / vec,
                f"all_sequential_{clock}_s": [t[index] for t in times[k]["sequential"]],
                f"all_vectorized_{clock}_s": [t[index] for t in times[k]["vectorized"]],
            }
        rows.append(row)
        print(
            f"{k:>3} {row['sequential_wall_s']:>11.2f} {row['vectorized_wall_s']:>11.2f} "
            f"{row['speedup_wall']:>7.2f}x {row['sequential_cpu_s']:>10.2f} {row['vectorized_cpu_s']:>10.2f} "
            f"{row['speedup_cpu']:>7.2f}x"
        )

    config = groups[args.groups[0]][0]
    engine = choose_engine(
        build_model(args.model, input_shape=data.input_shape, num_classes=data.num_classes),
        grad_sample_mode=config.privacy.grad_sample_mode,
    ).name
    print(f"train() per-sample gradient engine: {engine} (grad_sample_mode={config.privacy.grad_sample_mode!r})")
    today = datetime.date.today().isoformat()
    report = {
        "benchmark": "vectorized_bench",
        "date": today,
        "setup": {
            "dataset": args.dataset,
            "device": args.device,
            "model": args.model,
            "epochs": args.epochs,
            "batch_size": 128,
            "repeats": args.repeats,
            "planning": "excluded (plans passed to both sides)",
            "sequential_engine": engine,
        },
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
        },
        "results": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.model == "mlp" else f"-{args.model}") + (
        "" if args.dataset == "digits" else f"-{args.dataset}"
    )
    path = args.out_dir / f"vectorized-{args.device}-{today}{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
