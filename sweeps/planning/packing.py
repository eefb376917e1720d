"""Packs: several trials of one small model trained at once, as one unit of work.

A digits MLP trains its 20 epochs in less time than Ray Tune takes to start and end a trial;
scheduled one trial at a time, a sweep of such trials spends its slots on starting, reporting
and logging trials (figures: ``docs/benchmarks.md``). A pack is one
Ray Tune trial whose members are ordinary planned trials that share model, data and steps; the
worker trains them together with ``dp_core.vectorized.train_vectorized`` (stacked parameters,
one vmap over configurations), and each member still reports, is pruned and is logged as its
own trial, with the results it would have had alone (same seed, same noise). A pack holds up
to ``PACK_DEPTH`` times the configurations it trains at once (its width): as members are
pruned or finish, waiting members take their places, so the stack stays full and Ray's cost of
starting and ending a trial is paid once for several rounds of members.

Pure: no Ray, no MLflow. The worker side is ``sweeps.workers.pack``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dp_core.config import TrainConfig
from dp_core.dataset_facts import canonical_train_size
from dp_core.vectorized import can_vectorize, group_signature
from sweeps.planning.trials import PlannedTrial
from sweeps.protocol import PackSpec, UnitSpec

__all__ = [
    "AUTO_PACK_SIZE",
    "AUTO_MODELS",
    "PACK_DEPTH",
    "group_key",
    "pack_capacity",
    "pack_limit",
    "pack_size",
    "pack_trials",
    "pack_spec",
]

#: ``vectorize: auto`` packs up to this many configurations of a model in AUTO_MODELS. Past
#: the kernel's own gain (below), a bigger pack pays Ray's start and end of a trial once for
#: more trials: the benchmark sweep ran more trial-epochs per second with packs of 16 than of 8
#: (``docs/benchmarks.md``).
AUTO_PACK_SIZE = 16
#: Models whose vectorised step measured faster than one trial after another
#: (``bench/vectorized_bench.py``, figures in ``docs/benchmarks.md``); digits_cnn was slower
#: vectorised, so it runs one trial per unit. tabular_mlp is the mlp's kind of model (Linear and
#: ReLU layers) for tables (``bench/own_data_bench.py``).
AUTO_MODELS = frozenset({"mlp", "tabular_mlp"})
#: A pack of width W (configurations trained at once) holds up to PACK_DEPTH x W members. Ray
#: Tune's gap between the end of one trial and the start of the next is of the order of the
#: training time of a pack of pruned digits MLPs: a deeper pack pays that gap once for several
#: rounds of members.
PACK_DEPTH = 3


def pack_size(vectorize: int | str, model: str) -> int:
    """How many configurations of ``model`` one unit of work trains under the space's ``vectorize``."""
    if vectorize == "auto":
        return AUTO_PACK_SIZE if model in AUTO_MODELS else 1
    return int(vectorize)


def pack_capacity(width: int) -> int:
    """How many members one pack of ``width`` (configurations trained at once) holds."""
    return width * PACK_DEPTH if width > 1 else 1


def group_key(trial: PlannedTrial) -> tuple[Any, ...]:
    """Trials with equal keys may share a unit of work (``dp_core.vectorized.group_signature``)."""
    if not trial.packable:
        return (trial.kind, trial.key)  # it runs on its own
    config = TrainConfig.from_dict(dict(trial.train_config))
    train_size = canonical_train_size(config.data.dataset, validation_fraction=config.data.validation_fraction)
    return group_signature(config, train_size=train_size)


# Per group key: whether its model trains vectorised (a model build and one vmap step to find out).
_VECTORIZES: dict[tuple[Any, ...], bool] = {}


def pack_limit(trial: PlannedTrial, *, vectorize: int | str) -> int:
    """How many trials of ``trial``'s group one unit of work may train at once (1: one at a time)."""
    if not trial.packable:
        return 1
    size = pack_size(vectorize, str(trial.train_config.get("model")))
    key = group_key(trial)
    if size > 1 and key not in _VECTORIZES:
        _VECTORIZES[key] = can_vectorize([TrainConfig.from_dict(dict(trial.train_config))], plans=[trial.plan]) is None
    return size if size > 1 and _VECTORIZES[key] else 1


def pack_trials(trials: Sequence[PlannedTrial], *, vectorize: int | str, slots: int) -> list[list[PlannedTrial]]:
    """Split ``trials`` into packs, in order; a trial that cannot share its unit is a pack of one.

    Trials that can be trained together are cut into packs of at most ``pack_capacity`` of the
    width ``vectorize`` allows, and into at least ``slots`` packs where there are enough
    trials, so that every slot has work: 20 trials, width 8, 2 slots give 2 packs of 10 (each
    trained 5 at a time: whole rounds, see :func:`pack_spec`), not 8 + 8 + 4.
    """
    groups: dict[tuple[Any, ...], list[PlannedTrial]] = {}
    for trial in trials:
        groups.setdefault(group_key(trial), []).append(trial)
    packs: list[list[PlannedTrial]] = []
    for group in groups.values():
        width = pack_limit(group[0], vectorize=vectorize)
        if width > 1 and any(t.plan.stops_early for t in group):
            width = 1  # a pack trains in lockstep: no member may stop at its ε budget
        size = pack_capacity(width)
        count = max(math.ceil(len(group) / size), min(slots, len(group)))
        count = min(len(group), slots * math.ceil(count / slots))  # whole rounds of the slots
        base, extra = divmod(len(group), count)
        start = 0
        for index in range(count):
            end = start + base + (1 if index < extra else 0)
            packs.append(group[start:end])
            start = end
    return packs


def pack_spec(members: Sequence[PlannedTrial], *, width: int) -> UnitSpec:
    """What a worker needs to run ``members``, training at most ``width`` at once. A pack of one
    is the member's own spec.

    The width is cut to whole rounds: 10 members of width 8 train 5 at a time, twice, rather than
    8 and then 2 (the rounds of a pack whose members are pruned overlap anyway).
    """
    if len(members) == 1:
        return members[0].spec()
    return PackSpec.of(
        (m.spec() for m in members), width=math.ceil(len(members) / math.ceil(len(members) / max(width, 1)))
    )
