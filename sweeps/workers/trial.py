"""The Ray Tune trainable: one sweep trial runs ``dp_core.train`` and reports every epoch.

Each epoch's report carries the trial's checkpoint (model, optimizer, samplers' RNG state and
step count), so a trial Ray restarts after a worker dies resumes where it was and reaches the
same steps, and so the same ε, as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
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

from dp_core.config import DataConfig, TrainConfig
from dp_core.data import DatasetSplits, load_data
from dp_core.privacy_plan import PrivacyPlan
from dp_core.train import EpochReport, ProgressReport, TrainingDiverged, train
from sweeps.protocol import EpochRow, TrialSpec, wall_clock_ms
from sweeps.workers.threads import use_reserved_cpus

__all__ = [
    "BEST_MODEL_FILE",
    "CHECKPOINT_EVERY_FIELD",
    "CHECKPOINT_FILE",
    "KEEP_BEST_MODEL_FIELD",
    "epoch_row",
    "out_of_memory_message",
    "progress_row",
    "run_central_trial",
    "worker_dataset",
]

CHECKPOINT_FILE = "dp_state.pt"
#: The model of the trial's epoch of highest validation accuracy so far (dp_core.train's
#: ``best_model_path``), in its checkpoint, for trials whose Ray config sets KEEP_BEST_MODEL_FIELD.
BEST_MODEL_FILE = "best_model.pt"
#: The key of a Ray trial's config that asks it to keep BEST_MODEL_FILE: set by a private-selection
#: sweep, whose release is a search trial's model at its best epoch (sweeps.driver.register_models).
KEEP_BEST_MODEL_FIELD = "keep_best_model"
# The row reported with a checkpoint, saved beside it: a trial restored from the checkpoint of its
# last epoch (the launcher interrupted between that report and the trial's end) trains nothing
# more, and reports this row again so that the driver's new process sees how the trial ended.
LAST_ROW_FILE = "last_row.json"
# A dead worker redoes at most this much training; saving and persisting a checkpoint after
# every epoch (seconds long on a GPU) would cost more than the epochs. The space's
# checkpoint_every_minutes (sweeps.space.DEFAULT_CHECKPOINT_EVERY_MINUTES when it says nothing)
# reaches the trial in its Ray config under CHECKPOINT_EVERY_FIELD, in seconds; this is for a
# config without it (a sweep started before the setting existed, resumed).
CHECKPOINT_EVERY_SECONDS = 600.0
#: The key of a Ray trial's config that holds how often (seconds of training) it saves its checkpoint.
CHECKPOINT_EVERY_FIELD = "checkpoint_every_seconds"
# A test hook (tests/sweeps): a path template with {trial} and {epoch}. A lone trial (not a pack or
# a federated one) whose formatted path exists before it reports an epoch writes "<path>.held" and
# waits there until the path is removed, so that a test can inject a fault at a state that lasts
# as long as it needs. Unset, as outside tests, nothing is looked at.
HOLD_FILE_ENV = "DPSWEEP_TEST_HOLD_FILE"


@functools.lru_cache(maxsize=4)
def worker_dataset(config: DataConfig) -> DatasetSplits:
    """The splits a trial trains on, loaded once per worker process.

    Ray reuses worker processes across trials (reuse_actors); loading each dataset once per
    worker instead of once per trial keeps set-up out of every trial after the first.
    """
    return load_data(config)


def progress_row(
    report: ProgressReport, *, epoch: int, steps: int, epochs_planned: int, client_epsilons: tuple[float, ...] = ()
) -> EpochRow:
    """The row a worker reports from a run's progress report (an epoch's, or a federated round's).

    A search trial measures validation accuracy only (``train(evaluate_test=False)``): it is what
    pruning, Optuna and the frontier decide on, and no decision can read what is not there.
    """
    return EpochRow(
        epoch=epoch,
        epochs_planned=epochs_planned,
        steps=steps,
        val_accuracy=report.val_accuracy,
        val_loss=report.val_loss,
        val_accuracy_raw=report.val_accuracy_raw,
        epsilon=report.epsilon,
        delta=report.delta,
        accountant=report.accountant,
        epoch_seconds=report.train_seconds,
        eval_seconds=report.eval_seconds,
        stopped_by_budget=report.stopped_by_budget,
        client_epsilons=client_epsilons,
    )


def epoch_row(report: EpochReport, *, epochs_planned: int) -> EpochRow:
    """What a trial reports after an epoch."""
    return progress_row(report, epoch=report.epoch, steps=report.steps, epochs_planned=epochs_planned)


def out_of_memory_message(
    trial: str, config: TrainConfig, plan: PrivacyPlan, *, train_size: int, error: BaseException
) -> str:
    """Why trial ``trial`` failed_oom, and the setting that fixes it: a smaller physical batch.

    Virtual batches (``max_physical_batch_size``) split each logical batch into chunks that are
    clipped and summed one after another: the same DP step in less memory. Half the physical
    batch the trial had (its own setting, else its expected logical batch qN) is suggested.
    """
    physical = config.max_physical_batch_size or max(1, math.ceil(plan.sample_rate * train_size))
    setting = (
        f"max_physical_batch_size={config.max_physical_batch_size}"
        if config.max_physical_batch_size
        else (f"no max_physical_batch_size: whole logical batches of about {physical}")
    )
    what = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return (
        f"trial {trial} ran out of GPU memory ({setting}): {what}. Set max_physical_batch_size "
        f"smaller, e.g. max_physical_batch_size: {max(1, physical // 2)} in the space's fixed keys "
        "(the same DP step, in chunks); it is not retried unchanged."
    )


def _hold_if_asked(template: str, *, trial: str, epoch: int) -> None:
    """Wait while ``template``'s file for this trial and epoch exists (HOLD_FILE_ENV)."""
    hold = Path(template.format(trial=trial, epoch=epoch))
    if not hold.exists():
        return
    hold.with_name(hold.name + ".held").touch()
    while hold.exists():
        time.sleep(0.1)


def run_central_trial(unit: TrialSpec, tune_config: dict[str, Any]) -> None:
    """Runs one dp_core trial (:data:`sweeps.workers.trainable.RUNNERS`), reporting every epoch.

    A diverged run (NaN loss) is reported, not raised: retrying it would only diverge again. So is
    a run out of GPU memory (``torch.OutOfMemoryError``, the outcome ``failed_oom``), with the
    ``max_physical_batch_size`` that fixes it (:func:`out_of_memory_message`).
    With ``tune_config[KEEP_BEST_MODEL_FIELD]``, the model of its best epoch so far is saved with
    a checkpoint at every epoch that improves it, so that the latest checkpoint in the sweep's Ray
    storage holds the model of the trial's best epoch, however the trial ended.
    """
    started = time.perf_counter()
    started_ms = wall_clock_ms()  # the trial's MLflow run starts here, set-up included
    # Planned in the driver already (σ calibration, ε after every epoch): not again per trial.
    config, plan = TrainConfig.from_dict(unit.train), unit.plan
    use_reserved_cpus()
    data = worker_dataset(config.data)

    workdir = Path(tempfile.mkdtemp(prefix="dpsweep-trial-"))
    state_file = workdir / CHECKPOINT_FILE
    best_model = workdir / BEST_MODEL_FILE if tune_config.get(KEEP_BEST_MODEL_FIELD) else None
    restored = tune.get_checkpoint()
    restored_row = None
    if restored is not None:
        with restored.as_directory() as folder:
            shutil.copy(Path(folder) / CHECKPOINT_FILE, state_file)
            if best_model is not None and (Path(folder) / BEST_MODEL_FILE).exists():
                shutil.copy(Path(folder) / BEST_MODEL_FILE, best_model)
            if (Path(folder) / LAST_ROW_FILE).exists():
                restored_row = EpochRow.from_result(json.loads((Path(folder) / LAST_ROW_FILE).read_text()))
    reported_state = state_file.stat().st_mtime_ns if state_file.exists() else None
    last_return = started
    hold_template = os.environ.get(HOLD_FILE_ENV)
    epochs_reported = 0

    def on_epoch(report: EpochReport) -> None:
        nonlocal reported_state, last_return, epochs_reported
        now = time.perf_counter()
        # Time between two epochs that was neither training nor evaluation: trial set-up before
        # the first epoch (imports, data, model, σ), reporting and checkpointing after the others.
        overhead = now - last_return - report.train_seconds - report.eval_seconds
        row = epoch_row(report, epochs_planned=config.epochs)
        row = dataclasses.replace(
            row,
            started_ms=started_ms,
            ended_ms=wall_clock_ms(),
            **{"setup_seconds" if last_return == started else "report_seconds": max(overhead, 0.0)},
        )
        result = row.to_result()
        state = state_file.stat().st_mtime_ns if state_file.exists() else None
        checkpoint = None
        if state is not None and state != reported_state:  # a new checkpoint was saved this epoch
            (workdir / LAST_ROW_FILE).write_text(json.dumps(result))
            checkpoint = tune.Checkpoint.from_directory(str(workdir))
            reported_state = state
        if hold_template:
            _hold_if_asked(hold_template, trial=unit.name, epoch=report.epoch)
        tune.report(result, checkpoint=checkpoint)
        epochs_reported += 1
        last_return = time.perf_counter()

    try:
        train(
            config,
            on_epoch=on_epoch,
            checkpoint_path=state_file,
            data=data,
            checkpoint_every_seconds=float(tune_config.get(CHECKPOINT_EVERY_FIELD, CHECKPOINT_EVERY_SECONDS)),
            plan=plan,
            evaluate_test=False,
            best_model_path=best_model,
        )
    except TrainingDiverged as error:
        tune.report(EpochRow.of_divergence(str(error), epochs_planned=config.epochs, started_ms=started_ms).to_result())
    except torch.OutOfMemoryError as error:  # torch.cuda.OutOfMemoryError is this class
        # Reported as the outcome failed_oom, not raised: Ray Tune (FailureConfig) would retry the
        # trial unchanged, and it would run out of memory again.
        reason = out_of_memory_message(unit.name, config, plan, train_size=len(data.train), error=error)
        row = EpochRow.of_divergence(reason, epochs_planned=config.epochs, started_ms=started_ms, out_of_memory=True)
        del error  # its traceback holds the failed step's tensors
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the worker goes on to other trials (reuse_actors)
        tune.report(row.to_result())
    else:
        if epochs_reported == 0 and restored_row is not None:
            # Restored at its end: nothing was trained, and without a row the driver would count
            # the trial as cut short (pruned). The row was logged before the interruption.
            tune.report(dataclasses.replace(restored_row, replayed=True).to_result())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
