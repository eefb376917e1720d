"""The GPU check: ``python bench/gpu_check.py`` on a machine with one GPU, under 10 minutes.

Five measurements, each a separate process (or two) with its own time limit (a step that fails or
runs out of time is recorded as such and the others still run), and one JSON,
``bench/results/gpu-check-<date>.json``, naming the device (``torch.cuda.get_device_name``):

1. **The DP step against the non-private step**: ``python -m dp_core.bench --device cuda --models
   resnet18_gn,wrn16_4`` (B = 128 and 256; every engine checked against a one-example loop, then
   timed; peak memory of a step). Target: the default engine at most 1.3x the non-private step
   for ResNet-18-GN at B = 128, with peak memory at most 1.5x.
   **Precision, layout and sampling** (``precision``): the default engine (bk) and the non-private
   step for ResNet-18-GN, WRN-16-4-WS (``wrn``) and the CIFAR CNN at B = 256 and 1024, in fp32, bf16 and tf32
   (``--precisions``, where dp_core.bench has it), with and without ``channels_last``
   (``--channels-last``): step time and peak memory; at B = 256 also training steps/s with Poisson
   sampling on the device against on the host (``--sampling``). Target: bf16 at least 2x faster
   than fp32 for WRN-16-4-WS at B = 256.
2. **A sweep with fractional GPUs**: ``cifar10_grid`` as shipped (resnet18_gn, the cos schedule,
   virtual batches of 256, Opacus example settings) on ``synthetic_cifar10_full`` (CIFAR-10's
   shapes and sizes, generated: no download), 4 trials sharing the GPU (``--resources
   cpus=2,gpus=0.25``), for ``--sweep-seconds`` (Ray Tune's time budget). ``nvidia-smi`` samples
   the GPU's utilisation every 0.5 s meanwhile; ``train_share`` and trial-epochs/s come from the
   sweep's parent run in MLflow. Target: utilisation at least 80 %.
3. **Packs of CNN trials on the GPU**: ``bench/vectorized_bench.py`` with the CIFAR CNN on
   ``synthetic_cifar10_full``: K configurations trained together (one vmap) against one after
   another. ``vectorize: auto`` packs only the MLP today (sweeps.planning.packing.AUTO_MODELS, from CPU
   measurements); a speed-up above 1 here says packs of CNNs pay on a GPU.

4. **The ``cifar10_sota`` recipe at full size** (``recipe``): ``bench/recipe_step.py`` times 20
   logical steps of the shipped recipe (WRN-16-4-WS, batch 4096 in physical batches of 128, augmult
   16, EMA, the device's precision) on CIFAR-10-shaped tensors: examples/s, peak memory, and the
   projected time of De et al.'s 875-step run. Target (on an H100): at most 80 minutes, half the
   160 minutes a jax_privacy user measured on one A100-80GB.

``--dry-run`` runs all of them tiny and on the CPU (small models' batches, the small synthetic
stand-in, two CPU trials, no ``nvidia-smi``), into ``--out-dir`` (a temporary folder unless
given): it checks that the script and what it calls work, and measures nothing worth keeping.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHIPPED_SPACE = ROOT / "search_spaces" / "cifar10_grid.yaml"

# Per step: (GPU run, dry run) limits in seconds: 470 s at most on the GPU, under 8 minutes (the
# sweep's limit is its time budget plus 80 s, 130 s with the default budget).
_LIMITS = {
    "engines": (100, 240),
    "precision_256": (90, 240),
    "precision_1024": (80, 240),
    "sweep": (130, 300),
    "packs": (70, 180),
    "recipe": (100, 120),
}
_RECIPE_STEPS = 20
_SWEEP_OVERHEAD_S = 80  # Ray's start, planning and the frontier after the time budget
#: The step's models and batch sizes on the GPU (the issue's), and in a dry run.
_PRECISION_MODELS = {False: "resnet18_gn,wrn,cifar_cnn", True: "cifar_cnn"}
_PRECISION_BATCHES = {False: (256, 1024), True: (2,)}
_PRECISIONS = {False: "fp32,bf16,tf32", True: "fp32,bf16"}


def _run(command: list[str], *, limit: float, log_file: Path) -> dict[str, Any]:
    """Run one step's process; what it printed goes to ``log_file``; its exit code and seconds are returned."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    print(f"$ {' '.join(command)}", flush=True)
    with log_file.open("w") as out:
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=limit, check=False
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.monotonic() - started
    tail = log_file.read_text(errors="replace").splitlines()[-15:]
    status = "ok" if code == 0 else ("timed out" if code is None else f"exit {code}")
    print(f"  {status} after {seconds:.0f} s", flush=True)
    return {
        "command": command,
        "status": status,
        "seconds": seconds,
        "log": str(log_file),
        **({} if code == 0 else {"output_tail": tail}),
    }


# ---- 1. engines --------------------------------------------------------------------------------


def engines_step(work: Path, *, dry_run: bool) -> dict[str, Any]:
    out_dir = work / "engines"
    command = [sys.executable, "-m", "dp_core.bench", "--models", "resnet18_gn,wrn16_4", "--out-dir", str(out_dir)]
    if dry_run:
        command += ["--device", "cpu", "--batch-size", "2", "--engines", "bk", "--warmup", "0", "--repeats", "1"]
    else:
        command += ["--device", "cuda"]
    step = _run(command, limit=_LIMITS["engines"][dry_run], log_file=work / "engines.log")
    written = sorted(out_dir.glob("*.json"))
    if not written:
        return step
    report = json.loads(written[-1].read_text())
    step["file"] = str(written[-1])
    step["cases"] = [
        {
            "model": r["model"],
            "batch_size": r["batch_size"],
            "auto_engine": r["auto"],
            "best_opacus_engine": r["best_opacus"],
            "auto_time_ratio": r["engines"][r["auto"]].get("ratio"),
            "auto_memory_ratio": r["engines"][r["auto"]].get("mem_ratio"),
            "best_opacus_time_ratio": (r["engines"].get(r["best_opacus"]) or {}).get("ratio"),
            "non_private_ms": r["engines"]["none"]["median_s"] * 1e3,
        }
        for r in report["results"]
    ]
    step["full_report"] = report
    return step


def precision_step(work: Path, *, dry_run: bool) -> dict[str, Any]:
    """fp32 / bf16 / tf32 x default layout / channels_last, B = 256 and 1024, and sampling on the device."""
    precisions = _PRECISIONS[dry_run]
    step: dict[str, Any] = {"status": "ok", "runs": [], "cases": [], "sampling": [], "precisions": precisions}
    for batch_size in _PRECISION_BATCHES[dry_run]:
        out_dir = work / f"precision-{batch_size}"
        command = [sys.executable, "-m", "dp_core.bench", "--models", _PRECISION_MODELS[dry_run]]
        command += ["--batch-size", str(batch_size), "--engines", "bk", "--channels-last", "--out-dir", str(out_dir)]
        command += ["--precisions", precisions]
        first = batch_size == _PRECISION_BATCHES[dry_run][0]
        if dry_run:
            command += ["--device", "cpu", "--warmup", "0", "--repeats", "1"] + (["--sampling", "1"] if first else [])
        else:
            command += ["--device", "cuda", "--warmup", "2", "--repeats", "10"] + (
                ["--sampling", "20"] if first else []
            )
        limit = _LIMITS["precision_256" if first else "precision_1024"][dry_run]
        run = _run(command, limit=limit, log_file=work / f"precision-{batch_size}.log")
        step["runs"].append(run)
        if run["status"] != "ok":
            step["status"] = run["status"]
        written = sorted(out_dir.glob("*.json"))
        if written:
            _summarise_precision(json.loads(written[-1].read_text()), step)
    return step


def _summarise_precision(report: dict[str, Any], step: dict[str, Any]) -> None:
    for result in report["results"]:
        case = {
            "model": result["model"],
            "batch_size": result["batch_size"],
            "precision": result.get("precision", "fp32"),
            "channels_last": result.get("channels_last", False),
        }
        for name in ("none", result["auto"]):
            row = result["engines"].get(name, {})
            if "median_s" in row:
                step["cases"].append(
                    {
                        **case,
                        "engine": name,
                        "ms_per_step": row["median_s"] * 1e3,
                        "peak_mb": row["peak_step_bytes"] / 2**20,
                    }
                )
            else:
                step["cases"].append({**case, "engine": name, "status": row.get("status"), "reason": row.get("reason")})
        if "sampling" in result:
            step["sampling"].append({**case, **result["sampling"]})


# ---- 2. a sweep with fractional GPUs -----------------------------------------------------------


def derived_space(*, dry_run: bool) -> dict[str, Any]:
    """cifar10_grid as shipped, on the synthetic stand-in, shrunk to what the time allows."""
    space = yaml.safe_load(SHIPPED_SPACE.read_text())
    space["pruner"] = "none"  # throughput: every trial trains its epochs
    space["confirm"] = "off"  # the trials' throughput is measured, not the retraining of the best after them
    if dry_run:
        space["fixed"] |= {"dataset": "synthetic_cifar10", "epochs": 1, "max_physical_batch_size": 32}
        space["axes"] = {
            "model": ["cifar_cnn"],
            "batch_size": [64],
            "max_grad_norm": [1.0],
            "noise_multiplier": [1.0, 1.5],
            "lr": [0.5],
        }
    else:
        space["fixed"] |= {"dataset": "synthetic_cifar10_full", "epochs": 3}
        space["axes"] = {
            "model": ["resnet18_gn"],
            "batch_size": [256],
            "max_grad_norm": [1.0, 10.0],
            "noise_multiplier": [1.0, 1.5],
            "lr": [0.5, 1.0],
        }
    return space


class GpuSampler:
    """``nvidia-smi`` polled every 0.5 s in the background: (seconds since start, utilisation %, MiB used)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def start(self) -> bool:
        if shutil.which("nvidia-smi") is None:
            return False
        self._started = time.monotonic()
        self._process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return True

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            fields = [f.strip() for f in line.split(",")]
            try:
                # One line per GPU; the first GPU is the one the sweep has (one-GPU machine).
                self.samples.append((time.monotonic() - self._started, float(fields[0]), float(fields[1])))
            except (ValueError, IndexError):
                continue

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"sampled": False}
        utilisation = [u for _, u, _ in self.samples]
        busy = [i for i, u in enumerate(utilisation) if u > 0]
        # While trials trained: from the first to the last sample with the GPU in use (Ray's
        # start and the final report are outside it).
        window = utilisation[busy[0] : busy[-1] + 1] if busy else []
        return {
            "sampled": True,
            "samples": len(utilisation),
            "interval_s": 0.5,
            "mean_utilisation_whole_run": statistics.fmean(utilisation),
            "mean_utilisation_while_busy": statistics.fmean(window) if window else 0.0,
            "median_utilisation_while_busy": statistics.median(window) if window else 0.0,
            "share_of_busy_samples_at_least_80": sum(u >= 80 for u in window) / len(window) if window else 0.0,
            "busy_window_s": (self.samples[busy[-1]][0] - self.samples[busy[0]][0]) if busy else 0.0,
            "peak_memory_mib": max(m for _, _, m in self.samples),
            "trace": [[round(t, 1), u, m] for t, u, m in self.samples],
        }


def sweep_step(work: Path, *, dry_run: bool, sweep_seconds: float) -> dict[str, Any]:
    folder = work / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    space = derived_space(dry_run=dry_run)
    space_file = folder / f"{space['name']}.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "sweeps.launch",
        "--space",
        str(space_file),
        "--tracking-uri",
        tracking_uri,
        "--results-dir",
        str(folder / "results"),
        "--resources",
        "cpus=1,gpus=0" if dry_run else "cpus=2,gpus=0.25",
    ]
    if not dry_run:
        command += ["--time-budget", str(sweep_seconds)]
    sampler = GpuSampler()
    sampling = not dry_run and sampler.start()
    try:
        # Ray's start, planning and the frontier after the time budget: 90 s is ample on 16 cores.
        limit = _LIMITS["sweep"][dry_run] if dry_run else sweep_seconds + _SWEEP_OVERHEAD_S
        step = _run(command, limit=limit, log_file=work / "sweep.log")
    finally:
        sampler.stop()
    step["space"] = space
    step["gpu"] = (
        sampler.summary() if sampling else {"sampled": False, "why": "dry run" if dry_run else "no nvidia-smi"}
    )
    step["sweep"] = _parent_metrics(tracking_uri)
    return step


def _parent_metrics(tracking_uri: str) -> dict[str, Any]:
    """The sweep's time split and throughput, as the launcher logged them on the parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("dpsweep")
    if experiment is None:
        return {}
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`dpsweep.role` = 'sweep'")
    if not parents:
        return {}
    metrics = parents[0].data.metrics
    keys = (
        "train_share",
        "eval_share",
        "setup_share",
        "report_share",
        "idle_share",
        "trial_epochs_per_second",
        "wall_seconds",
        "total_seconds",
        "slots",
    )
    tags = parents[0].data.tags
    return {
        **{k: metrics[k] for k in keys if k in metrics},
        "trials": {k.removeprefix("dpsweep.trials."): v for k, v in tags.items() if k.startswith("dpsweep.trials.")},
    }


# ---- 3. packs of CNN trials ----------------------------------------------------------------------


def packs_step(work: Path, *, dry_run: bool) -> dict[str, Any]:
    out_dir = work / "packs"
    command = [
        sys.executable,
        str(ROOT / "bench" / "vectorized_bench.py"),
        "--model",
        "cifar_cnn",
        "--epochs",
        "1",
        "--out-dir",
        str(out_dir),
    ]
    if dry_run:
        command += ["--dataset", "synthetic_cifar10", "--device", "cpu", "--groups", "1", "2", "--repeats", "1"]
    else:
        command += [
            "--dataset",
            "synthetic_cifar10_full",
            "--device",
            "cuda",
            "--groups",
            "1",
            "4",
            "--repeats",
            "1",
        ]
    step = _run(command, limit=_LIMITS["packs"][dry_run], log_file=work / "packs.log")
    written = sorted(out_dir.glob("*.json"))
    if written:
        report = json.loads(written[-1].read_text())
        step["file"] = str(written[-1])
        step["results"] = [
            {k: row[k] for k in ("group_size", "sequential_wall_s", "vectorized_wall_s", "speedup_wall")}
            for row in report["results"]
        ]
        step["packs_pay"] = any(row["speedup_wall"] > 1.0 for row in report["results"] if row["group_size"] > 1)
    return step


# ---- 4. the cifar10_sota recipe at full size ----------------------------------------------------------


def recipe_step(work: Path, *, dry_run: bool) -> dict[str, Any]:
    out = work / "recipe.json"
    command = [sys.executable, str(ROOT / "bench" / "recipe_step.py"), "--steps", str(_RECIPE_STEPS), "--out", str(out)]
    step = _run(
        [*command, *(["--dry-run"] if dry_run else [])], limit=_LIMITS["recipe"][dry_run], log_file=work / "recipe.log"
    )
    if out.exists():
        step["result"] = {k: v for k, v in json.loads(out.read_text()).items() if k != "config"}
    return step


# ---- the report ---------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on this run (None: not measured)."""
    resnet = next(
        (c for c in report["engines"].get("cases", []) if c["model"] == "resnet18_gn" and c["batch_size"] == 128), None
    )
    gpu = report["sweep"].get("gpu", {})
    wrn = {
        c["precision"]: c["ms_per_step"]
        for c in report.get("precision", {}).get("cases", [])
        if c["model"] == "wrn" and c["batch_size"] == 256 and not c["channels_last"]
        and c["engine"] != "none" and "ms_per_step" in c
    }  # fmt: skip
    recipe = report.get("recipe", {}).get("result") or {}
    on_h100 = not report["dry_run"] and "H100" in report["device_name"]
    return {
        "cifar10_sota_875_steps_projected_at_most_80_minutes_on_h100": recipe["projected_minutes_for_875_steps"] <= 80
        if on_h100 and "projected_minutes_for_875_steps" in recipe
        else None,
        "wrn_16_4_ws_b256_bf16_at_least_2x_faster_than_fp32": wrn["fp32"] / wrn["bf16"] >= 2.0
        if {"fp32", "bf16"} <= set(wrn)
        else None,
        "resnet18_gn_b128_time_ratio_at_most_1.3": None
        if resnet is None or resnet["auto_time_ratio"] is None
        else resnet["auto_time_ratio"] <= 1.3,
        "resnet18_gn_b128_memory_ratio_at_most_1.5": None
        if resnet is None or resnet["auto_memory_ratio"] is None
        else resnet["auto_memory_ratio"] <= 1.5,
        "gpu_utilisation_at_least_80_percent": gpu["mean_utilisation_while_busy"] >= 80 if gpu.get("sampled") else None,
    }


def _device_name(dry_run: bool) -> str:
    import torch

    if not dry_run:
        return torch.cuda.get_device_name(0)
    import platform

    return f"{platform.processor() or platform.machine()} CPU (dry run)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="everything tiny and on the CPU (tests the script)")
    parser.add_argument(
        "--out-dir", type=Path, help="where the JSON goes (default: bench/results; dry run: a temporary folder)"
    )
    parser.add_argument("--sweep-seconds", type=float, default=50.0, help="the sweep's time budget (default 50)")
    args = parser.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: run it on a GPU machine, or --dry-run to test it on the CPU")
    started = time.monotonic()
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.dry_run else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "dry_run": args.dry_run,
        "device_name": _device_name(args.dry_run),
        "date": datetime.date.today().isoformat(),
        "work_dir": str(work),
    }
    report["engines"] = engines_step(work, dry_run=args.dry_run)
    report["precision"] = precision_step(work, dry_run=args.dry_run)
    report["sweep"] = sweep_step(work, dry_run=args.dry_run, sweep_seconds=args.sweep_seconds)
    report["packs"] = packs_step(work, dry_run=args.dry_run)
    report["recipe"] = recipe_step(work, dry_run=args.dry_run)
    report["targets"] = targets(report)
    report["seconds"] = time.monotonic() - started
    name = f"gpu-check-{'dryrun-cpu-' if args.dry_run else ''}{report['date']}.json"
    path = out_dir / name
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"\n{report['device_name']}: {report['seconds']:.0f} s")
    for case in report["engines"].get("cases", []):
        print(
            f"  {case['model']} B={case['batch_size']}: {case['auto_engine']} {case['auto_time_ratio']:.2f}x time, "
            f"{case['auto_memory_ratio']:.2f}x memory of the non-private step"
        )
    sweep = report["sweep"]
    if sweep.get("sweep"):
        print(
            f"  sweep: train_share {sweep['sweep'].get('train_share', float('nan')):.0%}, "
            f"{sweep['sweep'].get('trial_epochs_per_second', float('nan')):.2f} trial-epochs/s"
            + (
                f", GPU utilisation {sweep['gpu']['mean_utilisation_while_busy']:.0f} % while busy"
                if sweep["gpu"].get("sampled")
                else ""
            )
        )
    for case in report["precision"]["cases"]:
        if "ms_per_step" in case:
            layout = " channels_last" if case["channels_last"] else ""
            print(
                f"  {case['model']} B={case['batch_size']} {case['precision']}{layout} {case['engine']}: "
                f"{case['ms_per_step']:.1f} ms/step, {case['peak_mb']:.0f} MB"
            )
    for row in report["precision"]["sampling"]:
        print(
            f"  sampling {row['model']} B={row['batch_size']}: device {row['device_steps_per_s']:.1f} steps/s, "
            f"host {row['host_steps_per_s']:.1f} steps/s"
        )
    for row in report["packs"].get("results", []):
        print(f"  packs of {row['group_size']}: {row['speedup_wall']:.2f}x one after another")
    recipe = report["recipe"].get("result")
    if recipe:
        print(
            f"  cifar10_sota recipe: {recipe['median_seconds_per_step']:.2f} s per logical step, "
            f"{recipe['examples_per_second']:.0f} examples/s, 875 steps projected at "
            f"{recipe['projected_minutes_for_875_steps']:.1f} min"
        )
    print(f"  targets: {report['targets']}")
    print(f"wrote {path}")
    failed = [k for k in ("engines", "precision", "sweep", "packs", "recipe") if report[k]["status"] != "ok"]
    if failed:
        print(f"steps that did not finish: {', '.join(failed)} (see their logs in {work})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
