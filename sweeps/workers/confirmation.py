"""A confirmation stage's unit of work (a Ray task): its jobs trained up to their epochs, where
validation and test accuracy are measured. The choice between them is the driver's
(:func:`sweeps.results.confirm.choose`), which reads test accuracy only to report it. A job that
asks for its model (``keep_model``: one refit run per bound, fixed before any is evaluated) gets
its trained weights handed back with its row, for the driver to register."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from dp_core.config import TrainConfig
from dp_core.data import load_data
from dp_core.train import EpochReport, StopTraining, TrainingDiverged, train
from dp_core.vectorized import can_vectorize, train_vectorized
from sweeps.protocol import ConfirmationJob, ConfirmationResult, TrainedModel, wall_clock_ms
from sweeps.workers.own_data import receive
from sweeps.workers.threads import use_reserved_cpus

__all__ = ["train_jobs"]


def train_jobs(jobs: Sequence[ConfirmationJob], own_data: Sequence[Any] | None = None) -> list[ConfirmationResult]:
    """Train each job up to its epoch and measure validation (NaN without a validation split) and test
    accuracy there (a worker's part).

    Jobs whose configurations can train together (dp_core.vectorized) do, each stopping at its
    own epoch; the others train one by one. Each result carries when its job trained (wall clock):
    from its training's start (the unit's, for jobs that train together) to its epoch's evaluation.
    ``own_data``: the sweep's own datasets, from Ray's object
    store (:mod:`sweeps.workers.own_data`).
    """
    receive(own_data)
    use_reserved_cpus()
    configs = [TrainConfig.from_dict(job.train) for job in jobs]
    data = load_data(configs[0].data)
    stops = [job.epoch for job in jobs]
    measured: dict[int, Any] = {}
    started_ms: dict[int, int] = {}
    ended_ms: dict[int, int] = {}

    def row(k: int, report: EpochReport, model: nn.Module) -> ConfirmationResult:
        # A refit trains on the whole training split: no validation split is left to measure (NaN).
        val = math.nan if report.val_accuracy is None else report.val_accuracy
        kept = None
        if jobs[k].keep_model:
            # Only the weights, on the CPU: a small dict of tensors crosses to the driver, not the module.
            weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
            kept = TrainedModel(state_dict=weights, input_shape=tuple(data.input_shape), num_classes=data.num_classes)
        return ConfirmationResult(
            name=jobs[k].name,
            epsilon=report.epsilon,
            val_accuracy=val,
            test_accuracy=report.test_accuracy,
            test_accuracy_raw=math.nan if report.test_accuracy_raw is None else report.test_accuracy_raw,
            started_ms=started_ms[k],
            ended_ms=ended_ms[k],
            model=kept,
        )

    if len(jobs) > 1 and can_vectorize(configs, data=data) is None:

        def on_epoch(reports: dict[int, Any]) -> list[int]:
            done = [k for k, report in reports.items() if report.epoch >= stops[k]]
            measured.update({k: reports[k] for k in done})
            ended_ms.update(dict.fromkeys(done, wall_clock_ms()))
            return done

        try:
            started_ms.update(dict.fromkeys(range(len(jobs)), wall_clock_ms()))
            trained = train_vectorized(configs, data=data, on_epoch=on_epoch)
            return [row(k, measured[k], trained[k].model) for k in range(len(jobs))]
        except TrainingDiverged:
            measured.clear()  # train them one by one: only the diverging ones fail
    results = []
    for k, config in enumerate(configs):

        def stop_at(report: Any, k: int = k) -> None:
            if report.epoch >= stops[k]:
                measured[k], ended_ms[k] = report, wall_clock_ms()
                raise StopTraining

        try:
            started_ms[k] = wall_clock_ms()
            trained = train(config, data=data, on_epoch=stop_at)
            results.append(row(k, measured[k], trained.model))
        except TrainingDiverged:
            results.append(ConfirmationResult.failed(jobs[k].name, started_ms=started_ms[k]))
    return results
