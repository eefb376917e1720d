"""How much a sweep's trials will write in checkpoints, said before it starts.

A lone trial saves its checkpoint (weights and optimizer state, ``dp_core.train``) at most every
``checkpoint_every_minutes`` of training and after its last epoch; each one Ray Tune copies into
the sweep's storage (on a cluster, its shared storage or bucket). The launcher prints one line:
the size of one checkpoint, estimated from the model built once here, times the trials, times the
saves a trial can make. Packs and federated trials keep no checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dp_core.config import TrainConfig
from dp_core.dataset_facts import DATASETS
from dp_core.models import build_configured_model

__all__ = ["CheckpointVolume", "checkpoint_bytes", "checkpoint_volume", "shapes_known_here"]

#: Input shape and class count of a trial's dataset, or None where they are not known here.
ShapeOf = Callable[[TrainConfig], tuple[tuple[int, ...], int] | None]


def shapes_known_here(own_data: Iterable[Any] = ()) -> ShapeOf:
    """Input shape and class count from the zoo's dataset facts, or from the own datasets the
    launcher read (``dp_core.own_data.OwnDataset``); None for a dataset it knows no shape of."""
    own = {dataset.spec: dataset.splits for dataset in own_data}

    def shape_of(config: TrainConfig) -> tuple[tuple[int, ...], int] | None:
        dataset = config.data.dataset
        if dataset in own:
            return tuple(own[dataset].input_shape), own[dataset].num_classes
        if isinstance(dataset, str) and dataset in DATASETS:
            facts = DATASETS.get(dataset)
            return tuple(facts.input_shape), facts.num_classes
        return None

    return shape_of


def _optimizer_slots(config: TrainConfig) -> int:
    """Tensors of the parameters' size an optimizer keeps: SGD's momentum, Adam's two moments,
    RMSprop's square average (and its momentum)."""
    settings = config.optimizer
    momentum = 1 if settings.momentum else 0
    return {"sgd": momentum, "adam": 2, "rmsprop": 1 + momentum}[settings.optimizer]


def checkpoint_bytes(config: TrainConfig, *, input_shape: tuple[int, ...], num_classes: int) -> int:
    """One checkpoint of ``config``'s run: the model's state (parameters and buffers) and the
    optimizer's state, in bytes (the RNG states and reports are a few kB more)."""
    model = build_configured_model(config, input_shape=input_shape, num_classes=num_classes)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state + _optimizer_slots(config) * trained


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointVolume:
    """What a sweep's trials write in checkpoints: ``trials`` × saves × ``checkpoint_bytes``."""

    checkpoint_bytes: int  # the largest among the space's models
    model: str  # the model of that checkpoint
    trials: int
    every_minutes: float
    max_saves_per_trial: int  # a trial saves at most once an epoch

    def describe(self) -> str:
        one, most = self.checkpoint_bytes, self.trials * self.max_saves_per_trial * self.checkpoint_bytes
        return (
            f"checkpoints: one is about {_size(one)} ({self.model}: weights and optimizer state); {self.trials} "
            f"trial(s) save every {self.every_minutes:g} min of training and after their last epoch, at most "
            f"{self.max_saves_per_trial} each: {_size(self.trials * one)} to {_size(most)} written to the sweep's "
            "storage (checkpoint_every_minutes in the space file sets how often)"
        )


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def checkpoint_volume(
    configs: Iterable[Mapping[str, Any]],
    *,
    trials: int,
    every_minutes: float,
    shape_of: ShapeOf,
    time_budget_s: float | None = None,
) -> CheckpointVolume | None:
    """The volume for ``trials`` trials whose configurations are among ``configs`` (flat): the largest
    checkpoint of them is counted for every trial. A trial saves at most once an epoch, and within
    the sweep's ``time_budget_s`` at most once every ``every_minutes`` plus its last save. None if
    no configuration's data shape is known."""
    sizes: dict[tuple[Any, ...], tuple[int, str]] = {}
    epochs = 1
    for values in configs:
        config = TrainConfig.from_dict(values)
        epochs = max(epochs, config.epochs)
        shape = shape_of(config)
        if shape is None:
            continue
        model = config.model
        settings = config.optimizer
        key = (model.model, repr(sorted(model.model_kwargs.items())), model.gn_groups, settings.optimizer)
        key += (bool(settings.momentum), shape)
        if key not in sizes:
            sizes[key] = (checkpoint_bytes(config, input_shape=shape[0], num_classes=shape[1]), str(model.model))
    if not sizes:
        return None
    largest, model = max(sizes.values())
    return CheckpointVolume(
        checkpoint_bytes=largest,
        model=model,
        trials=trials,
        every_minutes=every_minutes,
        max_saves_per_trial=max(1, min(epochs, _saves_within(time_budget_s, every_minutes))),
    )


def _saves_within(time_budget_s: float | None, every_minutes: float) -> int:
    if time_budget_s is None:
        return 2**62
    return 1 + math.floor(time_budget_s / (60.0 * every_minutes))
