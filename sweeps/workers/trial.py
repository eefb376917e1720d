"""The Ray Tune trainable: one sweep trial runs ``dp_core.train`` and reports every epoch.

Each epoch's report carries the trial's checkpoint (model, optimizer, samplers' RNG state and
step count), so a trial Ray restarts after a worker dies resumes where it was and reaches the
same steps, and so the same ε, as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from dp_core.config import TrainConfig
from dp_core.config import DataConfig
from dp_core.data import DatasetSplits, load_data
from dp_core.federated import is_federated
from dp_core.plan import PrivacyPlan
from dp_core.train import EpochReport, TrainingDiverged, train

__all__ = ["run_trial", "trial_spec", "encode_spec", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "dp_state.pt"
# A dead worker redoes at most this much training; saving and persisting a checkpoint after
# every millisecond-long epoch would cost more than the epochs.
CHECKPOINT_EVERY_SECONDS = 5.0


@functools.lru_cache(maxsize=4)
def worker_dataset(config: DataConfig) -> DatasetSplits:
    """The splits a trial trains on, loaded once per worker process.

    Ray reuses worker processes across trials (reuse_actors); loading each dataset once per
    worker instead of once per trial keeps set-up out of every trial after the first.
    """
    return load_data(config)


def encode_spec(spec: dict[str, Any]) -> str:
    """A trial's spec (name, key, flat train config, params) as one JSON string.

    Ray Tune expands nested dicts and lists inside a config into search dimensions; one opaque
    string per trial keeps the spec exactly as planned.
    """
    return json.dumps(spec, sort_keys=True)


def trial_spec(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The spec ``encode_spec`` stored in a Ray trial's config."""
    return json.loads(tune_config["trial"])


def epoch_metrics(report: EpochReport, *, epochs_planned: int) -> dict[str, Any]:
    """The metrics a trial reports to Ray Tune after an epoch (ε = ∞ is reported as -1: JSON).

    A search trial measures validation accuracy only (``train(evaluate_test=False)``): it is what
    pruning, Optuna and the frontier decide on, and no decision can read what is not there.
    """
    return {
        "epoch": report.epoch,
        "epochs_planned": epochs_planned,
        "steps": report.steps,
        "val_accuracy": report.val_accuracy,
        "val_loss": report.val_loss,
        "epsilon": report.epsilon if math.isfinite(report.epsilon) else -1.0,
        "delta": report.delta,
        "accountant": report.accountant,
        "epoch_seconds": report.train_seconds,
        "eval_seconds": report.eval_seconds,
        "stopped_by_budget": report.stopped_by_budget,
    }


def run_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``trial_spec(tune_config)["train"]`` is a flat dp_core config.

    A diverged run (NaN loss) is reported, not raised: retrying it would only diverge again.
    """
    started = time.perf_counter()
    spec = trial_spec(tune_config)
    if "pack" in spec:
        from sweeps.workers.pack import run_pack  # several trials of one small model trained at once

        return run_pack(tune_config)
    if is_federated(spec["train"]):
        from sweeps.workers.federated import run_federated_trial  # FedAvg, clients as Ray actors

        return run_federated_trial(tune_config)
    config = TrainConfig.from_dict(spec["train"])
    # Planned in the driver already (σ calibration, ε after every epoch): not again per trial.
    plan = PrivacyPlan(**{**spec["plan"], "epsilon_by_epoch": tuple(spec["plan"]["epsilon_by_epoch"])})
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)
    data = worker_dataset(config.data)

    workdir = Path(tempfile.mkdtemp(prefix="dpsweep-trial-"))
    state_file = workdir / CHECKPOINT_FILE
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            shutil.copy(Path(folder) / CHECKPOINT_FILE, state_file)
    reported_state = state_file.stat().st_mtime_ns if state_file.exists() else None
    last_return = started

    def on_epoch(report: EpochReport) -> None:
        nonlocal reported_state, last_return
        now = time.perf_counter()
        # Time between two epochs that was neither training nor evaluation: trial set-up before
        # the first epoch (imports, data, model, σ), reporting and checkpointing after the others.
        overhead = now - last_return - report.train_seconds - report.eval_seconds
        metrics = epoch_metrics(report, epochs_planned=config.epochs)
        metrics["setup_seconds" if last_return == started else "report_seconds"] = max(overhead, 0.0)
        state = state_file.stat().st_mtime_ns if state_file.exists() else None
        checkpoint = None
        if state is not None and state != reported_state:  # a new checkpoint was saved this epoch
            checkpoint = tune.Checkpoint.from_directory(str(workdir))
            reported_state = state
        tune.report(metrics, checkpoint=checkpoint)
        last_return = time.perf_counter()

    try:
        train(config, on_epoch=on_epoch, checkpoint_path=state_file, data=data,
              checkpoint_every_seconds=CHECKPOINT_EVERY_SECONDS, plan=plan, evaluate_test=False)
    except TrainingDiverged as error:
        tune.report({"diverged": str(error), "epoch": 0, "epochs_planned": config.epochs,
                     "val_accuracy": 0.0, "epsilon": -1.0, "stopped_by_budget": False})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
