"""The ``cifar10_sota`` recipe's DP-SGD step at full size: examples/s, peak memory, and the projected
time of the paper's 875-step run (De et al. 2022, WRN-16-4 at ε = 1).

    python bench/recipe_step.py --steps 30 --out recipe.json          # on a GPU
    python bench/recipe_step.py --dry-run --out recipe.json           # tiny, on the CPU (tests the script)

The configuration is the shipped space's (``search_spaces/cifar10_sota.yaml``: WRN-16-4-WS, batch
4096 in physical batches of ``max_physical_batch_size``, augmult 16, EMA, C = 1, the device's
precision) at its first grid point, validated as a sweep's trial is. The data are CIFAR-10-shaped
random tensors on the device (the step's cost does not depend on the pixels, and nothing is
downloaded). Each logical step is Poisson-sampled at q = 4096/50000 and runs as ``dp_core.train``
runs it: views, the engine's clipped backward per physical chunk, noise and the update once per
logical step, then the parameter average. The first step is warm-up and not timed.

The anchor: jax_privacy's WRN-16-4 run at ε = 1 (875 steps, batch 4096, K = 16) took a user 160
minutes on one A100-80GB; issue 34's target is at most 80 minutes projected on one H100.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from dp_core.augment import augmentation_views
from dp_core.averaging import ParameterAverage
from dp_core.config import TrainConfig
from dp_core.dpsgd import make_private_step, poisson_batches
from dp_core.models import build_configured_model
from dp_core.precision import resolve_precision
from dp_core.train import build_optimizer
from sweeps.space import load_space

PAPER_STEPS = 875  # De et al.'s WRN-16-4 run at ε = 1
CIFAR10_TRAIN = 50_000
ANCHOR_A100_MINUTES = 160.0


def recipe_config(*, dry_run: bool) -> TrainConfig:
    """The shipped cifar10_sota space at its first grid point (a dry run: the same keys, tiny)."""
    space = load_space("cifar10_sota")
    point = space.grid_axis_values()[0]
    flat = {**space.fixed, **point, "seed": 0}  # a timing run: its seed is no secret
    flat["download"] = False
    flat["dataset"] = "synthetic_cifar10"  # never loaded: only its facts (shape, classes) are read
    if dry_run:
        flat.update(model_kwargs={"depth": 10, "width": 1}, batch_size=8, max_physical_batch_size=4, augmult=2)
        flat["device"] = "cpu"
    return TrainConfig.from_dict(flat)


def measure(config: TrainConfig, *, steps: int, num_examples: int, device: torch.device) -> dict[str, Any]:
    input_shape, num_classes = (3, 32, 32), 10
    torch.manual_seed(0)
    images = torch.randn(num_examples, *input_shape, device=device)
    labels = torch.randint(0, num_classes, (num_examples,), device=device)
    model = build_configured_model(config, input_shape=input_shape, num_classes=num_classes).to(device)
    ema = config.optimizer.ema_decay
    average = ParameterAverage(model, decay=ema) if ema is not None else None
    optimizer = build_optimizer(config, model)
    precision = resolve_precision(config.precision, device)
    sample_rate = config.batch_size / num_examples
    views = augmentation_views(config.data, input_shape=input_shape, generator=torch.Generator(device=device))
    step = make_private_step(
        model,
        optimizer,
        noise_multiplier=1.0,  # any σ: the step's cost does not depend on it
        max_grad_norm=config.privacy.max_grad_norm,
        expected_batch_size=sample_rate * num_examples,
        clipping=config.privacy.clipping,
        grad_sample_mode=config.privacy.grad_sample_mode,
        noise_generator=torch.Generator(device=device).manual_seed(1),
        augmult=config.data.augmult,
        views=views,
        precision=precision.name,
    )
    sampling = torch.Generator(device=device).manual_seed(2)
    seconds, examples = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for logical in range(steps + 1):  # the first is warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started, seen = time.perf_counter(), 0
        for indices, ends_step in poisson_batches(
            num_examples=num_examples,
            sample_rate=sample_rate,
            steps=1,
            generator=sampling,
            max_physical_batch_size=config.max_physical_batch_size,
            optimizer=step.optimizer,
        ):
            with precision.training():
                step.backward(images[indices], labels[indices])
            step.optimizer.step()
            step.optimizer.zero_grad(set_to_none=True)
            seen += len(indices)
            if ends_step and average is not None:
                average.update(getattr(step.model, "_module", step.model))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if logical > 0:
            seconds.append(time.perf_counter() - started)
            examples.append(seen)
    per_step = sorted(seconds)[len(seconds) // 2]
    return {
        "engine": step.engine,
        "precision": precision.name,
        "steps_timed": steps,
        "median_seconds_per_step": per_step,
        "examples_per_second": sum(examples) / sum(seconds),
        "views_per_second": config.data.augmult * sum(examples) / sum(seconds),
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "projected_minutes_for_875_steps": PAPER_STEPS * per_step / 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/recipe_step.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="logical steps timed after one warm-up (default 30)")
    parser.add_argument("--dry-run", action="store_true", help="the same keys, tiny, on the CPU")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    args = parser.parse_args(argv)
    config = recipe_config(dry_run=args.dry_run)
    if args.dry_run:
        device, num_examples, steps = torch.device("cpu"), 64, min(args.steps, 2)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device here: run it on a GPU machine, or --dry-run to test it on the CPU")
        device, num_examples, steps = torch.device("cuda"), CIFAR10_TRAIN, args.steps
    result = {
        "benchmark": "cifar10_sota recipe step",
        "dry_run": args.dry_run,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else f"{platform.machine()} CPU",
        "config": config.to_dict(),
        **measure(config, steps=steps, num_examples=num_examples, device=device),
        "anchor": f"jax_privacy WRN-16-4, eps 1: {PAPER_STEPS} steps in {ANCHOR_A100_MINUTES:.0f} min, one A100-80GB",
    }
    result["projected_at_most_80_minutes"] = (
        None if args.dry_run else result["projected_minutes_for_875_steps"] <= ANCHOR_A100_MINUTES / 2
    )
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(
        f"{result['device_name']}: {result['engine']} {result['precision']}, {result['median_seconds_per_step']:.2f} s "
        f"per logical step, {result['examples_per_second']:.0f} examples/s ({result['views_per_second']:.0f} views/s), "
        f"875 steps projected at {result['projected_minutes_for_875_steps']:.1f} min"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
