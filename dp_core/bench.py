"""Benchmark the per-sample gradient engines against non-private training: ``python -m dp_core.bench``.

For each model of the zoo at one batch size, every engine is first checked against the definition
(a one-example-at-a-time loop): its per-sample gradients (or norms) and its noiseless clipped step
must match, or it is reported as failed and never timed. Then one training step (forward,
backward, optimizer step, as ``dp_core.train`` runs it) is timed for non-private training and
every correct engine, round-robin so that load on a shared machine hits all of them alike; the
figures are medians after warm-up, with ratios to the non-private step of the same run, and the
peak memory a step allocates above the resting state (parameters, optimizer state, batch).
The table is printed and written to ``bench/results/<device>-<date>.json`` (``-quick`` added for
``--quick`` runs).

``--quick`` runs a CPU-sized version (smaller batches of the large models); ``--device cuda`` runs the GPU cases
(ResNet-18-GN and WRN-16-4 at B=128 and 256 on CIFAR-sized input, besides the small models).
``--precisions fp32,bf16,tf32`` times every case once per precision (``dp_core.precision``: the forward and
backward passes lowered, the DP bookkeeping float32), each against the non-private step in the same
precision; one the device lacks (tf32 on a CPU) is listed under ``skipped_precisions`` with the reason.
``--channels-last`` adds every case again with model and batch in ``torch.channels_last`` (each engine
checked in that layout too: one that gets it wrong is reported failed, not timed). ``--sampling`` adds, per
case, training steps per second with Poisson sampling on the device against on the host (the mask drawn on
the CPU, its indices copied to the device, as the trainer did before).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import opacus
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from dp_core.dataset_facts import DATASETS
from dp_core.dpsgd import PlainStep, PrivateStep, make_private_step, poisson_batches
from dp_core.engines import ENGINES, choose_engine
from dp_core.errors import ConfigError
from dp_core.models import build_model
from dp_core.precision import Precision, resolve_precision

__all__ = ["Case", "EngineCheck", "check_engine", "run_benchmark", "main"]

OPACUS_ENGINES = ("hooks", "functorch", "ew", "ghost")
# The dataset each model of the zoo is benchmarked on, for its input shape (dp_core.dataset_facts).
_DATASET_OF_MODEL = {
    "mlp": "digits", "digits_cnn": "digits", "mnist_cnn": "mnist",
    "cifar_cnn": "cifar10", "resnet18_gn": "cifar10", "wrn16_4": "cifar10",
    "resnet18_gn_cifar": "cifar10", "wrn": "cifar10",
}  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case:
    """One benchmarked configuration: a model of the zoo on inputs of one shape at one batch size."""

    model: str
    input_shape: tuple[int, int, int]
    batch_size: int
    channels_last: bool = False  # model and batch in torch.channels_last (NHWC)

    @property
    def layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def default_cases(device: str, *, quick: bool) -> list[Case]:
    if device == "cuda":
        sizes = [
            ("mlp", 256),
            ("digits_cnn", 64),
            ("mnist_cnn", 256),
            ("cifar_cnn", 128),
            ("resnet18_gn", 128),
            ("resnet18_gn", 256),
            ("wrn16_4", 128),
            ("wrn16_4", 256),
        ]
    else:  # two CPU cores: the large models at small batches, smaller still with --quick
        big = 8 if quick else 32
        sizes = [
            ("mlp", 64),
            ("digits_cnn", 64),
            ("mnist_cnn", 256),
            ("cifar_cnn", 128),
            ("resnet18_gn", big),
            ("wrn16_4", big),
        ]
    return [Case(model=m, input_shape=DATASETS.get(_DATASET_OF_MODEL[m]).input_shape, batch_size=b) for m, b in sizes]


def _build(case: Case, device: torch.device) -> nn.Module:
    torch.manual_seed(0)  # every variant starts from the same weights
    return build_model(case.model, input_shape=case.input_shape, num_classes=10).to(device, memory_format=case.layout)


def _timed_step(
    model: nn.Module, case: Case, device: torch.device, *, grad_sample_mode: str = "auto", precision: str = "fp32"
) -> PrivateStep:
    """The DP step a timing runs: σ = 1, C = 1, SGD at lr 0.01, the noise seeded (what it costs, not what it learns)."""
    return make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=case.batch_size,
        grad_sample_mode=grad_sample_mode,
        noise_generator=torch.Generator(device=device).manual_seed(0),
        precision=precision,
    )


def _batch(case: Case, size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, *case.input_shape, generator=generator)
    labels = torch.randint(0, 10, (size,), generator=generator)
    return images.to(device).contiguous(memory_format=case.layout), labels.to(device)


# ---------------------------------------------------------------------------------------------- correctness


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineCheck:
    """An engine against the one-example-at-a-time loop; ``correct`` needs every error ≤ ``tolerance``."""

    correct: bool
    norm_error: float  # max_i |‖g_i‖ - ‖g_i‖_naive| / ‖g_i‖_naive
    step_error: float  # ‖step - naive step‖ / ‖naive step‖, noiseless, C = median naive norm
    grad_sample_error: float | None  # max over tensors of the same, for engines that keep g_i
    tolerance: float
    reason: str = ""


def _without_dropout(model: nn.Module) -> nn.Module:
    # Dropout draws one mask per batch, the naive loop one per example: switch it off on both sides.
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    return model


def _naive_per_sample_grads(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[list[torch.Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(images)):
        loss = nn.functional.cross_entropy(model(images[i : i + 1]), labels[i : i + 1])
        out.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def check_engine(
    engine: str, case: Case, *, device: torch.device, examples: int = 5, tolerance: float = 1e-3
) -> EngineCheck:
    """Compare ``engine`` with the definition of DP-SGD's clipped step on ``examples`` examples."""
    images, labels = _batch(case, examples, device, seed=1)
    reference = _without_dropout(_build(case, device))
    per_sample = _naive_per_sample_grads(reference, images, labels)
    norms = torch.stack([torch.sqrt(sum(g.square().sum() for g in grads)) for grads in per_sample])
    bound = norms.median().item()  # clips some examples and not others
    factors = (bound / (norms + 1e-6)).clamp(max=1.0)
    expected = [
        sum(factors[i] * per_sample[i][k] for i in range(examples)) / examples for k in range(len(per_sample[0]))
    ]

    model = _without_dropout(_build(case, device))
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=examples,
        grad_sample_mode=engine,
    )
    step.backward(images, labels)
    norm_error = ((step.per_sample_norms() - norms).abs() / norms.clamp(min=1e-12)).max().item()
    grad_samples = step.per_sample_gradients()
    grad_sample_error = None
    if grad_samples is not None:
        grad_sample_error = max(
            _rel(g, torch.stack([per_sample[i][k] for i in range(examples)])) for k, g in enumerate(grad_samples)
        )
    step.optimizer.step()
    step_error = max(_rel(p.grad, e) for p, e in zip(model.parameters(), expected))
    errors = {"norm": norm_error, "step": step_error, "grad_sample": grad_sample_error or 0.0}
    bad = {k: v for k, v in errors.items() if not v <= tolerance}  # catches NaN too
    reason = ", ".join(f"{k} error {v:.2e} > {tolerance:g}" for k, v in bad.items())
    return EngineCheck(
        correct=not bad,
        norm_error=norm_error,
        step_error=step_error,
        grad_sample_error=grad_sample_error,
        tolerance=tolerance,
        reason=reason,
    )


# ---------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(step: Any, images: torch.Tensor, labels: torch.Tensor, precision: Precision) -> Callable[[], None]:
    def run() -> None:  # the body of dp_core.train's loop
        with precision.training():
            step.backward(images, labels)
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)

    return run


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (kineto writes them to fd 2 whatever the log level)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_step_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one step above what was allocated when it began."""
    if device.type == "cuda":
        _sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    # CPU: replay the profiler's allocation records (each op's own net allocation, in time order).
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    changes = sorted((e.time_range.end, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def time_variants(
    runs: dict[str, Callable[[], None]],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds per step of every variant, interleaved: round r runs each once.

    On a shared machine the CPU time of a step is the steadier figure (other processes stretch
    wall time, not the work done); both are kept.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    seconds: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            _sync(device)
            seconds[name]["wall"].append(time.perf_counter() - wall)
            seconds[name]["cpu"].append(time.process_time() - cpu)
    return seconds


def benchmark_case(
    case: Case,
    engines: Sequence[str],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    precision: Precision | None = None,
) -> dict[str, Any]:
    """Check, then time, every engine on ``case`` in ``precision`` (default fp32); engines that fail or
    cannot run are not timed. The check against the definition runs in fp32 (it tests the engine's
    formulas; a bf16 step differs from the definition by bf16 rounding, which tests/dp_core bound)."""
    precision = precision or Precision(name="fp32", device_type=device.type)
    images, labels = _batch(case, case.batch_size, device, seed=0)
    probe = _build(case, device)
    rows: dict[str, dict[str, Any]] = {}
    runs: dict[str, Callable[[], None]] = {}
    model = _build(case, device)
    runs["none"] = _step_fn(PlainStep(model, torch.optim.SGD(model.parameters(), lr=0.01)), images, labels, precision)
    rows["none"] = {"status": "ok"}
    for engine in engines:
        reasons = ENGINES.get(engine).unsupported(probe, clipping="flat")
        reasons += ENGINES.get(engine).unsupported_precision(precision.name)
        if reasons:
            rows[engine] = {"status": "unsupported", "reason": "; ".join(reasons)}
            continue
        try:
            check = check_engine(engine, case, device=device)
        except Exception as error:  # an engine that crashes is as unusable as a wrong one
            rows[engine] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
            continue
        rows[engine] = {"status": "ok" if check.correct else "failed", **dataclasses.asdict(check)}
        if check.correct:
            model = _build(case, device)
            step = _timed_step(model, case, device, grad_sample_mode=engine, precision=precision.name)
            run = _step_fn(step, images, labels, precision)
            try:
                run()  # e.g. out of memory at this batch size: report it rather than lose the whole run
            except Exception as error:
                rows[engine] = {"status": "failed", "reason": f"{type(error).__name__} at B={case.batch_size}: {error}"}
                del step, run, model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            runs[engine] = run
    seconds = time_variants(runs, device=device, warmup=warmup, repeats=repeats)
    base_wall, base_cpu = (statistics.median(seconds["none"][k]) for k in ("wall", "cpu"))
    base_mem = max(_peak_step_bytes(runs["none"], device), 1)
    for name, run in runs.items():
        wall, cpu = (statistics.median(seconds[name][k]) for k in ("wall", "cpu"))
        mem = _peak_step_bytes(run, device)
        rows[name].update(
            median_s=wall,
            ratio=wall / base_wall,
            cpu_median_s=cpu,
            cpu_ratio=cpu / max(base_cpu, 1e-9),
            peak_step_bytes=mem,
            mem_ratio=mem / base_mem,
        )
    timed_opacus = [e for e in OPACUS_ENGINES if "ratio" in rows.get(e, {})]
    best_opacus = min(timed_opacus, key=lambda e: rows[e]["ratio"], default=None)
    auto = choose_engine(probe, precision=precision.name).name
    return {
        **dataclasses.asdict(case),
        "precision": precision.name,
        "engines": rows,
        "best_opacus": best_opacus,
        "auto": auto,
        "auto_over_best_opacus": (rows[auto]["ratio"] / rows[best_opacus]["ratio"])
        if best_opacus and "ratio" in rows.get(auto, {})
        else None,
    }


def sampling_steps_per_second(case: Case, *, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """DP training steps per second (the auto engine) on Poisson batches of expected size B from N = 50 B
    examples held on ``device``, the mask drawn on the host against on the device.

    On the host, as the trainer did before sampling moved: ``rand(N)`` on the CPU, its indices as a
    Python list, a tensor of them copied to the device. On the device: drawn and indexed there.
    """
    num_examples = 50 * case.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num_examples, *case.input_shape, generator=generator)
    images = images.to(device).contiguous(memory_format=case.layout)
    labels = torch.randint(0, 10, (num_examples,), generator=generator).to(device)
    measured: dict[str, Any] = {"num_examples": num_examples, "steps": steps}
    for where in ("host", "device"):
        model = _build(case, device)
        step = _timed_step(model, case, device)
        sampling = torch.Generator(device="cpu" if where == "host" else device).manual_seed(1)
        train = functools.partial(_sampled_steps, step, images, labels, generator=sampling, host=where == "host")
        train(steps=warmup, sample_rate=case.batch_size / num_examples)
        _sync(device)
        started = time.perf_counter()
        train(steps=steps, sample_rate=case.batch_size / num_examples)
        _sync(device)
        measured[f"{where}_steps_per_s"] = steps / (time.perf_counter() - started)
        measured["engine"] = step.engine
    measured["device_over_host"] = measured["device_steps_per_s"] / measured["host_steps_per_s"]
    return measured


def _sampled_steps(
    step: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator,
    host: bool,
    steps: int,
    sample_rate: float,
) -> None:
    """``steps`` DP steps on Poisson batches drawn from ``generator``; ``host``: as a list, copied over."""
    for indices, _ in poisson_batches(
        num_examples=len(images), sample_rate=sample_rate, steps=steps, generator=generator
    ):
        if host:
            indices = torch.as_tensor(indices.tolist(), dtype=torch.long).to(images.device)
        step.backward(images[indices], labels[indices])
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'model':<12} {'B':>4} {'prec':<5} {'engine':<10} {'ms/step':>9} {'x none':>7} {'cpu x':>7} "
        f"{'peak MB':>9} {'x none':>7}  note"
    ]
    for result in results:
        layout = " NHWC" if result.get("channels_last") else ""
        for name, row in result["engines"].items():
            note = (
                ("auto" if name == result["auto"] else "")
                + (" best Opacus" if name == result["best_opacus"] else "")
                + layout
            )
            if "ratio" in row:
                lines.append(
                    f"{result['model']:<12} {result['batch_size']:>4} {result.get('precision', 'fp32'):<5} "
                    f"{name:<10} {row['median_s'] * 1e3:>9.1f} "
                    f"{row['ratio']:>7.2f} {row['cpu_ratio']:>7.2f} {row['peak_step_bytes'] / 2**20:>9.1f} "
                    f"{row['mem_ratio']:>7.2f}  {note.strip()}"
                )
            else:
                lines.append(
                    f"{result['model']:<12} {result['batch_size']:>4} {result.get('precision', 'fp32'):<5} "
                    f"{name:<10} {row['status'].upper()}: {row['reason']}{layout}"
                )
        if "sampling" in result:
            sampling = result["sampling"]
            lines.append(
                f"{result['model']:<12} {result['batch_size']:>4} sampling   host {sampling['host_steps_per_s']:.1f} "
                f"steps/s, device {sampling['device_steps_per_s']:.1f} steps/s ({sampling['engine']}){layout}"
            )
    return "\n".join(lines)


def run_benchmark(
    *,
    cases: Sequence[Case],
    engines: Sequence[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    out_dir: Path | None,
    quick: bool = False,
    sampling_steps: int = 0,
    log: Callable[[str], None] = print,
    precisions: Sequence[str] = ("fp32",),
) -> dict[str, Any]:
    """Benchmark ``engines`` on ``cases`` in each of ``precisions``; write ``<out_dir>/<device>-<date>.json``
    unless ``out_dir`` is None. A precision the device lacks is skipped, its reason in ``skipped_precisions``.

    With ``sampling_steps``, each case also times that many steps with sampling on the host and on the
    device (:func:`sampling_steps_per_second`)."""
    started = time.perf_counter()
    load_before = os.getloadavg()
    resolved, skipped = [], {}
    for name in precisions:
        try:
            resolved.append(resolve_precision(name, device))
        except ConfigError as error:
            skipped[name] = str(error)
            log(f"skipping precision {name}: {error}")
    results = []
    for case in cases:
        first_of_case = len(results)
        for precision in resolved:
            log(f"{case.model} B={case.batch_size} {precision.name} ...")
            results.append(
                benchmark_case(case, engines, device=device, warmup=warmup, repeats=repeats, precision=precision)
            )
        if sampling_steps:  # timed in the first precision asked for (fp32 by default), beside its result
            results[first_of_case]["sampling"] = sampling_steps_per_second(
                case, device=device, warmup=warmup, steps=sampling_steps
            )
    report = {
        "device": device.type,
        "device_name": _device_name(device),
        "date": datetime.date.today().isoformat(),
        "quick": quick,
        "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "timing": "median per-step wall time (median_s) and process CPU time (cpu_median_s) over interleaved "
        "rounds; ratio and cpu_ratio divide by the same median of 'none' (non-private) from this run",
        "memory": "peak bytes allocated during a step above the resting state (parameters, optimizer state, batch)",
        "precisions": [p.name for p in resolved],
        "skipped_precisions": skipped,
        "results": results,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if quick else ""  # a quick run never overwrites the full figures of the day
        path = out_dir / f"{device.type}-{report['date']}{suffix}.json"
        path.write_text(json.dumps(report, indent=1, default=float) + "\n")
        report["path"] = str(path)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dp_core.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CPU-sized run (the large models at small batches)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", help="comma-separated models of the zoo (default: all)")
    parser.add_argument("--engines", help=f"comma-separated engines (default: {','.join(ENGINES)})")
    parser.add_argument("--batch-size", type=int, help="one batch size for every model")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, here one per core)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 3, quick 2)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 25, quick 5)")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="where the JSON goes")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument(
        "--precisions",
        default="fp32",
        help="comma-separated precisions to time each case in: fp32, bf16, tf32 (default fp32; tf32 needs CUDA)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="also run every case in torch.channels_last (NHWC)"
    )
    parser.add_argument(
        "--sampling",
        type=int,
        default=0,
        metavar="STEPS",
        help="also time STEPS training steps per case with Poisson sampling on the device and on the host",
    )
    args = parser.parse_args(argv)
    # Opacus' hooks warn on every backward that reaches a layer whose inputs need no gradient.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = default_cases(args.device, quick=args.quick)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - set(_DATASET_OF_MODEL))
        if unknown:
            parser.error(f"unknown models {unknown}; known: {', '.join(_DATASET_OF_MODEL)}")
        cases = [c for c in cases if c.model in wanted]
    if args.batch_size:
        cases = list({dataclasses.replace(c, batch_size=args.batch_size): None for c in cases})
    if args.channels_last:
        cases += [dataclasses.replace(c, channels_last=True) for c in cases if len(c.input_shape) == 3]
    engines = args.engines.split(",") if args.engines else list(ENGINES)
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    precisions = args.precisions.split(",")
    unknown = sorted(set(precisions) - {"fp32", "bf16", "tf32"})
    if unknown:
        parser.error(f"unknown precisions {unknown}; known: fp32, bf16, tf32")
    report = run_benchmark(
        precisions=precisions,
        cases=cases,
        engines=engines,
        device=device,
        quick=args.quick,
        warmup=args.warmup if args.warmup is not None else (2 if args.quick else 3),
        repeats=args.repeats if args.repeats is not None else (5 if args.quick else 25),
        out_dir=None if args.no_save else args.out_dir,
        sampling_steps=args.sampling,
    )
    print(
        f"\n{report['device_name']}, torch {report['torch']}, opacus {report['opacus']}; "
        f"load average {report['load_average_before'][0]:.1f} -> {report['load_average_after'][0]:.1f}"
    )
    print(format_table(report["results"]))
    if "path" in report:
        print(f"\nwrote {report['path']}")
    timed = bool(report["results"])  # every precision skipped (tf32 alone on a CPU) measured nothing
    return 0 if timed and all(math.isfinite(r["engines"]["none"]["ratio"]) for r in report["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
