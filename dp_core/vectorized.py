"""Train several DP-SGD configurations of one small model at once, each as if trained alone.

A sweep's trials often differ only in numbers: clipping bound C, noise multiplier σ, learning
rate, momentum, weight decay, seed. ``train_vectorized(configs)`` stacks their parameters along a
leading config axis (``torch.func.stack_module_state``) and takes every step for all of them with
one ``vmap`` over configurations, so K trials run as one unit of work and report as K trials.

Each configuration keeps what makes it its own trial: its initial weights (seeded as ``train``
seeds them), its Poisson sampling stream, its noise stream, its privacy plan and its reports. Its
results equal ``train(config)``'s up to floating-point rounding: the same examples are drawn at
every step, the same Gaussian noise is added (bit for bit: the generator calls Opacus makes), and
clipping, scaling and the SGD update follow Opacus' ``DPOptimizer`` and ``torch.optim.SGD``
formula for formula. Only the order in which floats are summed differs.

``can_vectorize(configs)`` says whether a group can be trained this way, and if not, why.

This module runs the epochs of a group (who joins, who stops, the reports); the rules of a group
are in ``_vectorized_grouping``, the stacked weights and their DP-SGD step in ``_vectorized_stack``,
and the clipping under ``vmap`` in ``_vectorized_clipping``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from dp_core._vectorized_grouping import can_vectorize, checked_plans, group_signature
from dp_core._vectorized_stack import ConfigStack
from dp_core.config import TrainConfig
from dp_core.data import DatasetSplits, load_data
from dp_core.privacy_plan import PrivacyPlan
from dp_core.train import EpochReport, StopTraining, TrainingDiverged, TrainResult, epoch_report

__all__ = ["ConfigsDiverged", "can_vectorize", "group_signature", "train_vectorized"]

# Materialised per-example gradients are computed in chunks of at most this many bytes. glibc
# returns blocks above 32 MiB to the OS when freed, so a larger tensor page-faults anew on every
# step (docs/benchmarks.md has the figures).
_CHUNK_BYTES = 16 * 2**20


class ConfigsDiverged(TrainingDiverged):
    """The loss of the configurations at ``config_indices`` became NaN or infinite. As in ``train``,
    the run stops; the others give the same results when rerun without them, vectorised or alone."""

    def __init__(self, message: str, *, config_indices: tuple[int, ...]) -> None:
        super().__init__(message)
        self.config_indices = config_indices


def train_vectorized(
    configs: Sequence[TrainConfig],
    *,
    on_epoch: Callable[[dict[int, EpochReport]], Collection[int] | None] | None = None,
    data: DatasetSplits | None = None,
    plans: Sequence[PrivacyPlan] | None = None,
    width: int | None = None,
    evaluate_test: bool = True,
) -> list[TrainResult]:
    """Train ``configs`` together; return one ``TrainResult`` per configuration, in order.

    Each result equals ``train(config)``'s up to floating-point rounding. At most ``width``
    configurations (default: all) train at once; the others wait in order, and each takes the
    place of one that stopped, so the stack stays full while its configurations are pruned at
    different epochs. A configuration's epochs are its own, counted from when it joined; since
    its streams are its own too, when it joins changes nothing in its results.

    ``on_epoch(reports)`` gets ``{index into configs: report}`` for every configuration that
    has just finished an epoch (``report.epoch`` says which of its own); it may return indices
    to stop there (e.g. pruned by a scheduler): they keep their results so far
    (``stopped_early=True``) and the others go on exactly as before. ``StopTraining`` raised
    from it ends all; configurations that had not started keep no reports. ``data`` and
    ``plans`` may be passed pre-loaded and pre-computed, as for ``train``. A report's
    ``train_seconds`` and ``eval_seconds`` are the stack's time divided by its size, so a sweep
    summing them counts the machine time used. Raises ConfigError if the configurations cannot
    be trained together (``can_vectorize``), and ConfigsDiverged (a TrainingDiverged) naming
    those whose loss became NaN or infinite. Evaluation is ``train``'s: the validation split if
    there is one, the test split unless ``evaluate_test`` is false.
    """
    configs = list(configs)
    if width is not None and width < 1:
        raise ValueError(f"Expected width >= 1, but got width={width}.")
    if configs and data is None:
        data = load_data(configs[0].data)
    plans = checked_plans(configs, data, plans)
    assert data is not None
    stack = ConfigStack(configs, plans, data, evaluate_test=evaluate_test, chunk_bytes=_CHUNK_BYTES)
    width = len(configs) if width is None else width
    reports: list[list[EpochReport]] = [[] for _ in configs]
    stopped = [False] * len(configs)
    waiting = list(range(len(configs)))  # not started yet, in order

    while stack.running or waiting:
        free = width - len(stack.running)
        joining, waiting = waiting[:free], waiting[free:]
        if joining:
            stack.join(joining)
        size = len(stack.running)
        started = time.perf_counter()
        finite = stack.train_epoch()
        train_seconds = (time.perf_counter() - started) / size
        diverged = tuple(k for k, ok in zip(stack.running, finite) if not ok)
        if diverged:
            raise _diverged(configs, diverged, epoch=len(reports[diverged[0]]) + 1)
        started = time.perf_counter()
        measured = stack.evaluate()
        eval_seconds = (time.perf_counter() - started) / size
        epoch_reports = {
            k: epoch_report(
                plans[k],
                epoch=len(reports[k]) + 1,
                steps=(len(reports[k]) + 1) * plans[k].steps_per_epoch,
                measured=own,
                train_seconds=train_seconds,
                eval_seconds=eval_seconds,
            )
            for k, own in zip(stack.running, measured)
        }
        for k, report in epoch_reports.items():
            reports[k].append(report)
        to_stop, stop_all = _asked_to_stop(on_epoch, epoch_reports)
        if stop_all:
            waiting = []
        for k in to_stop:
            stopped[k] = True  # as train() marks a run its hook stopped, even at its last epoch
        leaving = to_stop | {k for k in stack.running if len(reports[k]) >= configs[k].epochs}
        if leaving:
            stack.remove(leaving)

    return [
        TrainResult(
            config=config.replace(noise_multiplier=plan.noise_multiplier),
            plan=plan,
            reports=tuple(own),
            stopped_early=stop or not own,
            model=stack.model(k),
        )
        for k, (config, plan, own, stop) in enumerate(zip(configs, plans, reports, stopped))
    ]


def _diverged(configs: Sequence[TrainConfig], diverged: tuple[int, ...], *, epoch: int) -> ConfigsDiverged:
    # Named by their hyperparameters, never their loss (see TrainingDiverged).
    details = "; ".join(
        f"config {k} (lr={configs[k].optimizer.lr}, max_grad_norm={configs[k].privacy.max_grad_norm})" for k in diverged
    )
    return ConfigsDiverged(
        f"the loss became non-finite in epoch {epoch} for {details}; lower the learning rate.", config_indices=diverged
    )


def _asked_to_stop(
    on_epoch: Callable[[dict[int, EpochReport]], Collection[int] | None] | None,
    epoch_reports: dict[int, EpochReport],
) -> tuple[set[int], bool]:
    """The configurations ``on_epoch`` stops after this epoch, and whether it ended the whole run."""
    if on_epoch is None:
        return set(), False
    try:
        to_stop, stop_all = set(on_epoch(epoch_reports) or ()), False
    except StopTraining:
        to_stop, stop_all = set(epoch_reports), True
    unknown = to_stop - set(epoch_reports)
    if unknown:
        raise ValueError(f"on_epoch asked to stop configurations {sorted(unknown)}, which are not training.")
    return to_stop, stop_all
