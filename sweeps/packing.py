"""Packs: several trials of one small model trained at once, as one unit of work.

A digits MLP trains its 20 epochs in a third of a second; scheduled one trial at a time, a
sweep of such trials spends its slots on starting, reporting and logging trials. A pack is one
Ray Tune trial whose members are ordinary planned trials that share model, data and steps; the
worker trains them together with ``dp_core.vectorized.train_vectorized`` (stacked parameters,
one vmap over configurations), and each member still reports, is pruned and is logged as its
own trial, with the results it would have had alone (same seed, same noise).

Pure: no Ray, no MLflow. The worker side is ``sweeps.pack_trial``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from dp_core.config import TrainConfig
from dp_core.federated import is_federated
from dp_core.vectorized import can_vectorize
from sweeps.planning import PlannedTrial

__all__ = ["AUTO_PACK_SIZE", "AUTO_MODELS", "pack_size", "pack_trials", "pack_spec", "member_specs"]

#: ``vectorize: auto`` packs up to this many configurations of a model in AUTO_MODELS.
AUTO_PACK_SIZE = 8
#: Models whose vectorised step measured faster than one trial after another on 2 CPU cores
#: (bench/vectorized_bench.py: the digits MLP 1.39x at 4 and 1.64x at 8 configurations;
#: digits_cnn was slower vectorised, so it runs one trial per unit).
AUTO_MODELS = frozenset({"mlp"})


def pack_size(vectorize: int | str, model: str) -> int:
    """How many configurations of ``model`` one unit of work trains under the space's ``vectorize``."""
    if vectorize == "auto":
        return AUTO_PACK_SIZE if model in AUTO_MODELS else 1
    return int(vectorize)


def _group_key(trial: PlannedTrial) -> str:
    """What members of one pack must share (dp_core.vectorized checks it again, with reasons)."""
    config = dict(trial.train_config)
    if is_federated(config):
        return json.dumps({"federated": trial.key})  # a federated trial runs on its own
    shared = {k: config.get(k) for k in ("dataset", "data_root", "model", "gn_groups", "epochs", "delta", "accountant",
                                         "max_physical_batch_size", "device", "test_batch_size")}
    shared["sample_rate"] = trial.plan.sample_rate
    return json.dumps(shared, sort_keys=True, default=str)


def pack_trials(trials: Sequence[PlannedTrial], *, vectorize: int | str, slots: int) -> list[list[PlannedTrial]]:
    """Split ``trials`` into packs, in order; a trial that cannot share its unit is a pack of one.

    Trials that can be trained together are cut into packs of at most the size ``vectorize``
    allows, and into at least ``slots`` packs where there are enough trials, so that every slot
    has work: 20 trials, size 8, 2 slots give 4 packs of 5, not 8 + 8 + 4.
    """
    groups: dict[str, list[PlannedTrial]] = {}
    for trial in trials:
        groups.setdefault(_group_key(trial), []).append(trial)
    packs: list[list[PlannedTrial]] = []
    for group in groups.values():
        first = group[0]
        size = 1 if is_federated(first.train_config) else pack_size(vectorize, str(first.train_config.get("model")))
        if size > 1 and len(group) > 1:
            configs = [TrainConfig.from_dict(dict(t.train_config)) for t in group]
            if can_vectorize(configs, plans=[t.plan for t in group]) is not None:
                size = 1
        count = max(math.ceil(len(group) / size), min(slots, len(group)))
        count = min(len(group), slots * math.ceil(count / slots))  # whole rounds of the slots
        base, extra = divmod(len(group), count)
        start = 0
        for index in range(count):
            end = start + base + (1 if index < extra else 0)
            packs.append(group[start:end])
            start = end
    return packs


def pack_spec(members: Sequence[PlannedTrial]) -> dict[str, Any]:
    """What a worker needs to run ``members`` (JSON-able). A pack of one is the member's own spec."""
    if len(members) == 1:
        return members[0].spec()
    keys = [m.key for m in members]
    return {
        "name": f"pack_{members[0].name}+{len(members) - 1}",
        "key": hashlib.sha256(" ".join(keys).encode()).hexdigest()[:16],
        "pack": [m.spec() for m in members],
    }


def member_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The trial specs a Ray trial's spec stands for: its members, or itself."""
    return list(spec["pack"]) if "pack" in spec else [spec]
