"""The Ray Tune trainable of a pack: its member trials trained together, reported one by one.

A pack's results carry, in the field ``members``, each running member's epoch metrics (the ones
a lone trial reports) since the pack's previous result, keyed by the member's trial key; the
driver logs them as separate trials. A pack sends a result at most every ``REPORT_SECONDS`` and
when it ends, not after every epoch: a Ray Tune function trainable waits inside
``tune.report`` until the driver's control loop has taken the result, and a digits pack's
epochs are shorter than that wait, so per-epoch results kept its worker waiting on the driver
for most of its time. Pruning does not wait for results: at the pruning rungs the pack asks
the sweep's pruning board (a Ray actor shared by all trials) about all its members at once;
pruned members stop and the others go on unchanged.

A member whose loss diverges is reported as failed and the others start over without it (same
seeds, so the same results; the driver logs each epoch once). A pack that runs out of GPU memory
reports each member still training as failed_oom (sweeps.workers.trial), not raised: Ray Tune would
retry it unchanged. A pack keeps no checkpoint: it is
a few seconds of small-model training, so a pack whose worker died is simply run again.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray
import torch
from ray import tune

from dp_core.config import TrainConfig
from dp_core.train import EpochReport
from dp_core.vectorized import ConfigsDiverged, train_vectorized
from sweeps.planning.pruning import epsilon_band
from sweeps.protocol import EpochRow, PackSpec, encode_rows, wall_clock_ms
from sweeps.workers.threads import use_reserved_cpus
from sweeps.workers.trial import epoch_row, out_of_memory_message, worker_dataset

__all__ = ["run_pack"]


#: A pack sends its members' epochs to Ray Tune at most this often (and when it ends).
REPORT_SECONDS = 2.0


def run_pack(unit: PackSpec, tune_config: dict[str, Any]) -> None:
    """Runs a pack (:data:`sweeps.workers.trainable.RUNNERS`; see :func:`sweeps.planning.packing.pack_spec`)."""
    started = time.perf_counter()
    members, width = unit.members, unit.width
    configs = [TrainConfig.from_dict(m.train) for m in members]
    plans = [m.plan for m in members]
    bands = [epsilon_band(m.planned_epsilon) for m in members]
    epochs = configs[0].epochs
    use_reserved_cpus()
    data = worker_dataset(configs[0].data)
    board = ray.get_actor(tune_config["board"]) if tune_config.get("board") else None
    rungs = set(ray.get(board.rung_epochs.remote())) if board is not None else set()

    active = list(range(len(members)))  # members still to train, as indices into members
    ended: set[int] = set()  # members pruned or through their epochs
    unsent: dict[str, list[EpochRow]] = {}  # member key -> epochs not yet sent to Tune
    # Where the pack's time went, in seconds: training and evaluation (from the trainer's own
    # reports), set-up before the first epoch, and everything else (waiting on Tune and the
    # board included). What is not yet in a result is the difference of the two sums.
    spent = {"epoch_seconds": 0.0, "eval_seconds": 0.0, "setup_seconds": 0.0, "report_seconds": 0.0}
    sent = dict(spent)
    last_sent = time.perf_counter()
    # Member -> when it joined the stack (wall clock, ms): its MLflow run's start. A member that
    # starts over (another diverged) keeps its first start: its run spans both.
    joined_ms: dict[int, int] = {}

    def send() -> None:
        nonlocal last_sent
        now = time.perf_counter()
        spent["report_seconds"] = (
            now - started - spent["epoch_seconds"] - spent["eval_seconds"] - spent["setup_seconds"]
        )
        latest = [rows[-1] for rows in unsent.values()]
        tune.report(
            {
                "epoch": max(row.epoch for row in latest),
                "epochs_planned": epochs,
                "members": encode_rows(unsent),
                **{k: spent[k] - sent[k] for k in spent},
                # Ray Tune insists that every result carries the searcher's metrics; the members' own
                # values are in ``members``, these summary values decide nothing.
                "val_accuracy": max(row.val_accuracy for row in latest),
                "epsilon": max(row.epsilon for row in latest),
            }
        )
        sent.update(spent)
        unsent.clear()
        last_sent = time.perf_counter()

    def on_epoch(reports: dict[int, EpochReport]) -> list[int]:
        ended_ms = wall_clock_ms()
        train_seconds = sum(r.train_seconds for r in reports.values())  # the pack's time, split evenly
        eval_seconds = sum(r.eval_seconds for r in reports.values())
        # The stack's epoch took train_seconds + eval_seconds of wall time; a member's first one began then.
        epoch_began_ms = ended_ms - round(1000 * (train_seconds + eval_seconds))
        for i, report in reports.items():
            if report.epoch == 1:
                joined_ms.setdefault(active[i], epoch_began_ms)
        rows = {
            active[i]: dataclasses.replace(
                epoch_row(r, epochs_planned=epochs),
                started_ms=joined_ms.get(active[i], epoch_began_ms),
                ended_ms=ended_ms,
            )
            for i, r in reports.items()
        }
        if not any(spent.values()):
            spent["setup_seconds"] = time.perf_counter() - started - train_seconds - eval_seconds
        spent["epoch_seconds"] += train_seconds
        spent["eval_seconds"] += eval_seconds
        at_rung = [k for k, row in rows.items() if row.epoch in rungs and row.epoch < epochs]
        stop: set[int] = set()
        if at_rung:
            verdicts = set(
                ray.get(
                    board.judge.remote(
                        [(members[k].key, bands[k], rows[k].epoch, rows[k].val_accuracy) for k in at_rung]
                    )
                )
            )
            stop = {k for k in at_rung if members[k].key in verdicts}
        for k, row in rows.items():
            row = dataclasses.replace(row, pruned=k in stop)
            unsent.setdefault(members[k].key, []).append(row)
            if k in stop or row.epoch >= epochs:
                ended.add(k)
        if time.perf_counter() - last_sent >= REPORT_SECONDS:
            send()
        return [i for i, k in enumerate(active) if k in stop]

    while active:
        try:
            train_vectorized(
                [configs[k] for k in active],
                data=data,
                plans=[plans[k] for k in active],
                on_epoch=on_epoch,
                width=width,
                evaluate_test=False,
            )
            if unsent:
                send()
            return
        except torch.OutOfMemoryError as error:  # torch.cuda.OutOfMemoryError is this class
            for k in active:
                if k in ended:
                    continue
                reason = out_of_memory_message(
                    members[k].name, configs[k], plans[k], train_size=len(data.train), error=error
                )
                unsent.setdefault(members[k].key, []).append(
                    EpochRow.of_divergence(
                        reason, epochs_planned=epochs, started_ms=joined_ms.get(k, 0), out_of_memory=True
                    )
                )
            del error  # its traceback holds the failed step's tensors
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            send()
            return
        except ConfigsDiverged as error:
            diverged = {active[i] for i in error.config_indices}
            for k in diverged:
                unsent[members[k].key] = [
                    EpochRow.of_divergence(str(error), epochs_planned=epochs, started_ms=joined_ms.get(k, 0))
                ]
            send()
            # The others start over without them: their own streams, so the results they had.
            active = [k for k in active if k not in diverged and k not in ended]
