"""The Ray Tune trainable of a pack: its member trials trained together, reported one by one.

Every epoch the pack sends one Tune result whose ``members`` field holds each running member's
epoch metrics (the ones a lone trial reports), keyed by the member's trial key; the driver logs
them as separate trials. Pruning is asked of the sweep's pruning board (a Ray actor shared by all
trials) once per epoch for all members; pruned members stop and the others go on unchanged.

A member whose loss diverges is reported as failed and the others start over without it (same
seeds, so the same results; the driver logs each epoch once). A pack keeps no checkpoint: it is
a few seconds of small-model training, so a pack whose worker died is simply run again.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ray
import torch
from ray import tune

from dp_core.config import TrainConfig
from dp_core.plan import PrivacyPlan
from dp_core.train import EpochReport
from dp_core.vectorized import ConfigsDiverged, train_vectorized
from sweeps.pruning import epsilon_band
from sweeps.trial import _dataset, epoch_metrics, trial_spec

__all__ = ["run_pack"]


def _plan(raw: dict[str, Any]) -> PrivacyPlan:
    return PrivacyPlan(**{**raw, "epsilon_by_epoch": tuple(raw["epsilon_by_epoch"])})


def run_pack(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable for a spec with ``pack`` (see :func:`sweeps.packing.pack_spec`)."""
    started = time.perf_counter()
    members = trial_spec(tune_config)["pack"]
    configs = [TrainConfig.from_dict(m["train"]) for m in members]
    plans = [_plan(m["plan"]) for m in members]
    bands = [epsilon_band(float(m["params"]["planned_epsilon"])) for m in members]
    epochs = configs[0].epochs
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)
    data = _dataset(configs[0].data.dataset, configs[0].data.data_root, configs[0].data.download)
    board = ray.get_actor(tune_config["board"]) if tune_config.get("board") else None

    active = list(range(len(members)))  # members still to train, as indices into members
    pruned: set[int] = set()
    last_return = started

    def on_epoch(epoch: int, reports: dict[int, EpochReport]) -> list[int]:
        nonlocal last_return
        now = time.perf_counter()
        rows = {active[i]: epoch_metrics(r, epochs_planned=epochs) for i, r in reports.items()}
        train_seconds = sum(r.train_seconds for r in reports.values())  # the pack's time, split evenly
        eval_seconds = sum(r.eval_seconds for r in reports.values())
        stop: set[int] = set()
        if board is not None and epoch < epochs:
            verdicts = ray.get(board.judge.remote([(members[k]["key"], bands[k], epoch, row["test_accuracy"])
                                                   for k, row in rows.items()]))
            stop = {k for k in rows if members[k]["key"] in set(verdicts)}
        for k, row in rows.items():
            row["pruned"] = k in stop
        overhead = max(now - last_return - train_seconds - eval_seconds, 0.0)
        tune.report({
            "epoch": epoch, "epochs_planned": epochs, "members": json.dumps({members[k]["key"]: row
                                                                           for k, row in rows.items()}),
            "epoch_seconds": train_seconds, "eval_seconds": eval_seconds,
            "setup_seconds" if last_return == started else "report_seconds": overhead,
            # Ray Tune insists that every result carries the searcher's metrics; the members' own
            # values are in ``members``, these summary values decide nothing.
            "test_accuracy": max(row["test_accuracy"] for row in rows.values()),
            "epsilon": max(row["epsilon"] for row in rows.values()),
        })
        last_return = time.perf_counter()
        pruned.update(stop)
        return [i for i, k in enumerate(active) if k in stop]

    while active:
        try:
            train_vectorized([configs[k] for k in active], data=data, plans=[plans[k] for k in active],
                             on_epoch=on_epoch)
            return
        except ConfigsDiverged as error:
            diverged = {active[i] for i in error.config_indices}
            tune.report({"epoch": 0, "epochs_planned": epochs, "members": json.dumps({
                members[k]["key"]: {"diverged": str(error), "epoch": 0, "epochs_planned": epochs,
                                    "test_accuracy": 0.0, "epsilon": -1.0, "stopped_by_budget": False}
                for k in diverged}), "test_accuracy": 0.0, "epsilon": -1.0})
            # The others start over without them: their own streams, so the results they had.
            active = [k for k in active if k not in diverged and k not in pruned]
            last_return = time.perf_counter()
