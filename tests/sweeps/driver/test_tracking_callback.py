"""The Tune callback that logs a sweep's trials to MLflow, driven hook by hook.

Real parts only: a sqlite MLflow store and a SweepTracker, Ray Tune ``Trial`` objects whose
config holds the unit spec the way the runner builds it, and Tune results built by the workers'
own encoders (``epoch_row``, ``EpochRow.of_divergence``, ``encode_rows``) from plan-consistent
epoch reports. What is asserted is read back from MLflow with a client of its own.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from dp_core.train import EpochReport
from sweeps.driver.sweep_stats import SweepStats
from sweeps.driver.tracking_callback import TrackingCallback
from sweeps.planning import PlannedTrial, plan_trial
from sweeps.planning.packing import pack_spec
from sweeps.protocol import TRIAL_FIELD, EpochRow, encode_rows, encode_unit
from sweeps.tracking import SweepTracker
from sweeps.workers.trial import epoch_row
from tests._mlflow_store import empty_sqlite_store

# Ray trials need a session directory (Tune's trial paths live under it): the one-CPU local Ray.
pytestmark = pytest.mark.usefixtures("local_ray")

EPOCHS = 4
BASE = {"dataset": "digits", "model": "mlp", "batch_size": 256, "epochs": EPOCHS, "delta": 1e-5, "accountant": "rdp"}


# ---- what the runner and the workers make ------------------------------------------------------


def _planned(name: str, noise: float, lr: float = 0.5, **overrides: Any) -> PlannedTrial:
    return plan_trial(
        {**BASE, "noise_multiplier": noise, "lr": lr, **overrides},
        name=name,
        axis_values={"noise_multiplier": noise, "lr": lr},
    )


def _ray_trial(members: list[PlannedTrial], root: Path) -> Trial:
    """A Tune trial whose config is ``runner._new_tuner``'s: the encoded unit (a pack of several members,
    or one trial) under TRIAL_FIELD; its paths set as Tune sets them before starting it."""
    unit = pack_spec(members, width=len(members))
    trial = Trial(
        "run_trial",
        config={TRIAL_FIELD: encode_unit(unit)},
        stub=True,
        storage=StorageContext(storage_path=str(root), experiment_dir_name="sweep"),
    )
    trial.init_local_path()
    return trial


def _row(
    trial: PlannedTrial, epoch: int, accuracy: float, *, steps: int | None = None, stopped_by_budget: bool = False
) -> EpochRow:
    """The row a worker reports after ``epoch`` (sweeps.workers.trial.epoch_row), ε as planned."""
    plan = trial.plan
    steps = epoch * plan.steps_per_epoch if steps is None else steps
    report = EpochReport(
        epoch=epoch,
        steps=steps,
        val_loss=2.0 - accuracy,
        val_accuracy=accuracy,
        epsilon=plan.epsilon_at(steps),
        delta=plan.delta,
        accountant=plan.accountant,
        noise_multiplier=plan.noise_multiplier,
        train_seconds=0.25,
        eval_seconds=0.05,
        stopped_by_budget=stopped_by_budget,
    )
    return epoch_row(report, epochs_planned=EPOCHS)


def _tune_result(trial: Trial, reported: dict[str, Any], iteration: int) -> dict[str, Any]:
    """What Tune hands a callback: the worker's report plus Tune's own bookkeeping."""
    return {
        **reported,
        "trial_id": trial.trial_id,
        "training_iteration": iteration,
        "done": False,
        "checkpoint_dir_name": None,
        "time_this_iter_s": 0.3,
    }


def _lone_result(trial: Trial, row: EpochRow, iteration: int) -> dict[str, Any]:
    """A lone trial's report (sweeps.workers.trial.run_central_trial): one row per result."""
    extra = {"setup_seconds": 0.5} if iteration == 1 else {"report_seconds": 0.01}
    return _tune_result(trial, dataclasses.replace(row, **extra).to_result(), iteration)


def _pack_result(trial: Trial, rows: dict[str, list[EpochRow]], iteration: int) -> dict[str, Any]:
    """A pack's report (sweeps.workers.pack.run_pack's send): its members' rows since the last one."""
    latest = [member[-1] for member in rows.values()]
    return _tune_result(
        trial,
        {
            "epoch": max(row.epoch for row in latest),
            "epochs_planned": EPOCHS,
            "members": encode_rows(rows),
            "epoch_seconds": 0.75,
            "eval_seconds": 0.15,
            "setup_seconds": 0.0,
            "report_seconds": 0.02,
            "val_accuracy": max(row.val_accuracy for row in latest),
            "epsilon": max(row.epsilon for row in latest),
        },
        iteration,
    )


# ---- the store, the callback, reading back -----------------------------------------------------


def _tracker(tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(tracking_uri=empty_sqlite_store(tmp_path / "mlflow.db"), experiment="dpsweep")
    tracker.start_sweep(sweep_id="sweep", run_name="sweep", params={"space": "test"}, tags={})
    return tracker


def _callback(tracker: SweepTracker, total: int) -> tuple[TrackingCallback, io.StringIO]:
    out = io.StringIO()  # the default display: one line per finished trial
    return TrackingCallback(tracker, SweepStats(), total=total, out=out), out


def _children(tracker: SweepTracker) -> dict[str, Any]:
    """The sweep's child runs by run name, read with a client of the test's own."""
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    experiment = client.get_experiment_by_name("dpsweep")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("dpsweep.role") == "sweep"]
    assert [run.info.run_id for run in parents] == [tracker.parent_run_id]
    children = [run for run in runs if run.info.run_id != tracker.parent_run_id]
    assert all(run.data.tags.get("dpsweep.role") == "trial" for run in children)
    assert all(run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id for run in children)
    names = [run.info.run_name for run in children]
    assert len(names) == len(set(names)), f"one child run per trial, got {sorted(names)}"
    return {run.info.run_name: run for run in children}


def _history(tracker: SweepTracker, run: Any, metric: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))


def _logged(trial: PlannedTrial) -> dict[str, str]:
    """A trial's params as MLflow holds them."""
    return {k: "None" if v is None else str(v) for k, v in trial.params().items()}


# ---- lone trials ------------------------------------------------------------------------------


def test_a_lone_trial_is_one_child_run_that_shows_at_start_and_logs_each_epoch_at_its_step(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    callback, out = _callback(tracker, total=1)
    planned = _planned("trial_0000", noise=1.0)
    trial = _ray_trial([planned], tmp_path / "ray")
    accuracies = [0.4, 0.6, 0.7, 0.75]

    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    callback.on_trial_result(
        iteration=1, trials=[trial], trial=trial, result=_lone_result(trial, _row(planned, 1, 0.4), 1)
    )
    callback._writer.drain()  # the callback's writes run on its background thread
    # A lone trial's run shows from its start, with its first epoch, while it trains.
    (running,) = _children(tracker).values()
    assert running.info.status == "RUNNING" and running.data.tags["dpsweep.outcome"] == "running"
    assert _history(tracker, running, "val_accuracy") == [(1, 0.4)]

    for epoch, accuracy in enumerate(accuracies[1:], start=2):
        callback.on_trial_result(
            iteration=epoch,
            trials=[trial],
            trial=trial,
            result=_lone_result(trial, _row(planned, epoch, accuracy), epoch),
        )
    callback.on_trial_complete(iteration=5, trials=[trial], trial=trial)
    callback.close()

    runs = _children(tracker)
    assert list(runs) == ["trial_0000"]  # named after the trial, not after Tune's trial id
    run = runs["trial_0000"]
    assert run.info.status == "FINISHED" and run.data.tags["dpsweep.outcome"] == "completed"
    assert run.data.tags["dpsweep.trial_key"] == planned.key
    assert run.data.params == _logged(planned)
    steps = [e * planned.plan.steps_per_epoch for e in range(1, EPOCHS + 1)]
    assert _history(tracker, run, "val_accuracy") == list(enumerate(accuracies, start=1))
    assert _history(tracker, run, "val_loss") == [(e, pytest.approx(2.0 - a)) for e, a in enumerate(accuracies, 1)]
    assert _history(tracker, run, "epsilon") == [(e, planned.plan.epsilon_at(s)) for e, s in enumerate(steps, 1)]
    assert _history(tracker, run, "epoch_seconds") == [(e, 0.25) for e in range(1, EPOCHS + 1)]
    assert callback.outcomes == {"completed": 1}
    assert callback.stats.epochs == EPOCHS and callback.stats.trials_finished == 1
    assert "trial_0000" in out.getvalue() and "completed" in out.getvalue()
    # The points the launcher builds its frontier from are the ones MLflow holds.
    assert [(p.trial, p.epoch, p.accuracy, p.epsilon, p.run_id) for p in callback.logged_points()] == [
        ("trial_0000", e, a, planned.plan.epsilon_at(s), run.info.run_id)
        for (e, a), s in zip(enumerate(accuracies, 1), steps)
    ]


def test_a_trial_with_parameter_averaging_logs_the_last_iterates_accuracy_beside_the_averages(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    callback, _ = _callback(tracker, total=2)
    averaged, plain = _planned("trial_0000", noise=1.0, ema_decay=0.99), _planned("trial_0001", noise=1.0)
    for planned, raw in ((averaged, 0.5), (plain, None)):
        trial = _ray_trial([planned], tmp_path / planned.name)
        report = dataclasses.replace(_first_report(planned), val_accuracy_raw=raw)
        row = epoch_row(report, epochs_planned=EPOCHS)
        assert (row.val_accuracy, row.val_accuracy_raw) == (0.6, raw)
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
        callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=_lone_result(trial, row, 1))
        callback.on_trial_complete(iteration=2, trials=[trial], trial=trial)
    callback.close()
    runs = _children(tracker)
    assert _history(tracker, runs["trial_0000"], "val_accuracy") == [(1, 0.6)]
    assert _history(tracker, runs["trial_0000"], "val_accuracy_raw") == [(1, 0.5)]
    assert "val_accuracy_raw" not in runs["trial_0001"].data.metrics


def _first_report(trial: PlannedTrial) -> EpochReport:
    """Epoch 1's report of ``trial`` at accuracy 0.6, as a worker's train() hands it to on_epoch."""
    plan = trial.plan
    return EpochReport(
        epoch=1,
        steps=plan.steps_per_epoch,
        val_loss=1.4,
        val_accuracy=0.6,
        epsilon=plan.epsilon_at(plan.steps_per_epoch),
        delta=plan.delta,
        accountant=plan.accountant,
        noise_multiplier=plan.noise_multiplier,
        train_seconds=0.25,
        eval_seconds=0.05,
    )


def test_each_way_a_lone_trial_ends_is_its_outcome(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    callback, out = _callback(tracker, total=5)
    completed = _planned("trial_0000", noise=1.0)
    pruned = _planned("trial_0001", noise=1.2)  # the scheduler stops it after its second epoch
    # An in-trial ε budget reached two steps into the third epoch: dp_core.train stops there and
    # says so in that epoch's report.
    budget = _planned("trial_0002", noise=1.4)
    budget_stop = 2 * budget.plan.steps_per_epoch + 2
    diverged = _planned("trial_0003", noise=1.6, lr=50.0)
    reason = "the loss became non-finite in epoch 3 (lr=50.0, max_grad_norm=1.0); lower the learning rate."
    out_of_memory = _planned("trial_0004", noise=1.8)
    oom_reason = "trial trial_0004 ran out of GPU memory (...). Set max_physical_batch_size smaller, e.g. ..."
    reports = [
        (completed, [_row(completed, e, 0.5 + e / 10) for e in range(1, EPOCHS + 1)]),
        (pruned, [_row(pruned, e, 0.2) for e in (1, 2)]),
        (
            budget,
            [
                _row(budget, 1, 0.5),
                _row(budget, 2, 0.5),
                _row(budget, 3, 0.55, steps=budget_stop, stopped_by_budget=True),
            ],
        ),
        # sweeps.workers.trial reports a divergence as a row (retrying would only diverge again).
        (
            diverged,
            [_row(diverged, 1, 0.3), _row(diverged, 2, 0.1), EpochRow.of_divergence(reason, epochs_planned=EPOCHS)],
        ),
        # ... and running out of GPU memory too (retrying unchanged would only run out again).
        (
            out_of_memory,
            [
                _row(out_of_memory, 1, 0.4),
                EpochRow.of_divergence(oom_reason, epochs_planned=EPOCHS, out_of_memory=True),
            ],
        ),
    ]
    for planned, rows in reports:
        trial = _ray_trial([planned], tmp_path / "ray")
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
        for iteration, row in enumerate(rows, start=1):
            callback.on_trial_result(
                iteration=iteration, trials=[trial], trial=trial, result=_lone_result(trial, row, iteration)
            )
        callback.on_trial_complete(iteration=len(rows) + 1, trials=[trial], trial=trial)
    callback.close()

    runs = _children(tracker)
    assert {name: run.data.tags["dpsweep.outcome"] for name, run in runs.items()} == {
        "trial_0000": "completed",
        "trial_0001": "pruned",
        "trial_0002": "stopped_by_budget",
        "trial_0003": "failed",
        "trial_0004": "failed_oom",
    }
    assert {name: run.info.status for name, run in runs.items()} == {
        "trial_0000": "FINISHED",
        "trial_0001": "FINISHED",
        "trial_0002": "FINISHED",
        "trial_0003": "FAILED",
        "trial_0004": "FAILED",
    }
    assert [step for step, _ in _history(tracker, runs["trial_0001"], "val_accuracy")] == [1, 2]
    assert [step for step, _ in _history(tracker, runs["trial_0002"], "val_accuracy")] == [1, 2, 3]
    assert _history(tracker, runs["trial_0002"], "epsilon")[-1] == (3, budget.plan.epsilon_at(budget_stop))
    # A diverged trial is failed with its reason; its epochs before the divergence stay, and the
    # divergence row (accuracy 0 at epoch 0) is no epoch of it.
    assert runs["trial_0003"].data.tags["dpsweep.failure"] == reason
    assert _history(tracker, runs["trial_0003"], "val_accuracy") == [(1, 0.3), (2, 0.1)]
    assert all("dpsweep.failure" not in runs[name].data.tags for name in ("trial_0000", "trial_0001", "trial_0002"))
    assert runs["trial_0004"].data.tags["dpsweep.failure"] == oom_reason
    assert _history(tracker, runs["trial_0004"], "val_accuracy") == [(1, 0.4)]
    assert callback.outcomes == {"completed": 1, "pruned": 1, "stopped_by_budget": 1, "failed": 1, "failed_oom": 1}
    assert not [p for p in callback.points if p.trial in ("trial_0003", "trial_0004") and p.epoch == 0]
    assert reason in out.getvalue() and oom_reason in out.getvalue() and "failed_oom" in out.getvalue()


def test_a_trial_restored_at_its_end_keeps_its_epochs_and_is_completed_not_pruned(tmp_path: Path) -> None:
    """The launcher interrupted between a trial's last report (with its checkpoint) and the
    trial's end: on --resume, Tune restores the trial at that checkpoint, it trains nothing more
    and reports its last row again, marked replayed (sweeps.workers.trial). The resumed sweep's
    callback ends the trial with that row's outcome and logs none of its epochs twice."""
    planned = _planned("trial_0000", noise=1.0)
    rows = [_row(planned, e, 0.5 + e / 10) for e in range(1, EPOCHS + 1)]
    tracker = _tracker(tmp_path)
    first, _ = _callback(tracker, total=1)
    trial = _ray_trial([planned], tmp_path / "ray")
    first.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for iteration, row in enumerate(rows, start=1):
        first.on_trial_result(
            iteration=iteration, trials=[trial], trial=trial, result=_lone_result(trial, row, iteration)
        )
    first.close()  # interrupted: the trial never completed in this process

    resumed = SweepTracker(tracking_uri=tracker.tracking_uri, experiment="dpsweep")
    resumed.start_sweep(sweep_id="sweep", run_name="sweep", params={"space": "test"}, tags={})
    assert planned.key not in resumed.ended_before
    second, _ = _callback(resumed, total=1)
    restored = _ray_trial([planned], tmp_path / "ray")
    second.on_trial_start(iteration=0, trials=[restored], trial=restored)
    replayed = dataclasses.replace(rows[-1], replayed=True)
    second.on_trial_result(iteration=1, trials=[restored], trial=restored, result=_lone_result(restored, replayed, 1))
    second.on_trial_complete(iteration=2, trials=[restored], trial=restored)
    second.close()

    (run,) = _children(resumed).values()
    assert run.data.tags["dpsweep.outcome"] == "completed" and run.info.status == "FINISHED"
    assert second.outcomes == {"completed": 1}
    assert second.stats.epochs == 0 and not second.points  # no epoch trained (or counted) twice
    assert _history(resumed, run, "val_accuracy") == [(e, 0.5 + e / 10) for e in range(1, EPOCHS + 1)]


# ---- packs ------------------------------------------------------------------------------------


def test_a_packs_members_are_logged_as_separate_trials_each_epoch_once(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    callback, _ = _callback(tracker, total=3)
    a, b, c = (_planned(f"trial_000{i}", noise=1.0 + i / 10) for i in range(3))
    pack = _ray_trial([a, b, c], tmp_path / "ray")
    reason = "the loss became non-finite in epoch 3 for configuration 2 (lr=0.5); lower the learning rate."

    callback.on_trial_start(iteration=0, trials=[pack], trial=pack)
    # Two epochs of all three; b is pruned at the rung after its second epoch (sweeps.workers.pack).
    first = {
        a.key: [_row(a, 1, 0.5), _row(a, 2, 0.6)],
        b.key: [_row(b, 1, 0.2), dataclasses.replace(_row(b, 2, 0.25), pruned=True)],
        c.key: [_row(c, 1, 0.4), _row(c, 2, 0.45)],
    }
    callback.on_trial_result(iteration=1, trials=[pack], trial=pack, result=_pack_result(pack, first, 1))
    # c diverges in epoch 3: reported at once, and a starts over without it (same streams, so the
    # same results), reporting its epochs 1 and 2 again before its new ones.
    callback.on_trial_result(
        iteration=2,
        trials=[pack],
        trial=pack,
        result=_pack_result(pack, {c.key: [EpochRow.of_divergence(reason, epochs_planned=EPOCHS)]}, 2),
    )
    again = {a.key: [_row(a, 1, 0.5), _row(a, 2, 0.6), _row(a, 3, 0.7), _row(a, 4, 0.8)]}
    callback.on_trial_result(iteration=3, trials=[pack], trial=pack, result=_pack_result(pack, again, 3))
    callback.on_trial_complete(iteration=4, trials=[pack], trial=pack)
    callback.close()

    runs = _children(tracker)
    assert sorted(runs) == ["trial_0000", "trial_0001", "trial_0002"]  # the members; no run for the pack
    for planned in (a, b, c):
        assert runs[planned.name].data.params == _logged(planned)
        assert runs[planned.name].data.tags["dpsweep.trial_key"] == planned.key
    assert [runs[name].data.tags["dpsweep.outcome"] for name in sorted(runs)] == ["completed", "pruned", "failed"]
    assert [runs[name].info.status for name in sorted(runs)] == ["FINISHED", "FINISHED", "FAILED"]
    assert _history(tracker, runs["trial_0000"], "val_accuracy") == [(1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8)]
    assert _history(tracker, runs["trial_0001"], "val_accuracy") == [(1, 0.2), (2, 0.25)]
    assert _history(tracker, runs["trial_0002"], "val_accuracy") == [(1, 0.4), (2, 0.45)]
    assert runs["trial_0002"].data.tags["dpsweep.failure"] == reason
    for planned in (a, b, c):  # each member's own ε, not the pack's summary value
        epsilons = _history(tracker, runs[planned.name], "epsilon")
        assert epsilons[0] == (1, planned.plan.epsilon_at(planned.plan.steps_per_epoch))
    assert callback.outcomes == {"completed": 1, "pruned": 1, "failed": 1}
    assert callback.stats.epochs == 4 + 2 + 2 and callback.stats.trials_finished == 3


# ---- errors -----------------------------------------------------------------------------------


def test_a_trial_that_errors_is_failed_and_names_its_error_file(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    callback, out = _callback(tracker, total=4)
    lone = _planned("trial_0000", noise=1.0)
    trial = _ray_trial([lone], tmp_path / "ray")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in (1, 2):
        callback.on_trial_result(
            iteration=epoch,
            trials=[trial],
            trial=trial,
            result=_lone_result(trial, _row(lone, epoch, 0.3 * epoch), epoch),
        )
    trial.handle_error(RuntimeError("worker lost"))  # what Tune does before calling on_trial_error
    callback.on_trial_error(iteration=3, trials=[trial], trial=trial)

    # A pack that errors after one member finished, while another trained and before a third began.
    done, cut, unstarted = (_planned(f"trial_000{i}", noise=1.0 + i / 10) for i in range(1, 4))
    pack = _ray_trial([done, cut, unstarted], tmp_path / "ray")
    callback.on_trial_start(iteration=3, trials=[pack], trial=pack)
    rows = {done.key: [_row(done, e, 0.5) for e in range(1, EPOCHS + 1)], cut.key: [_row(cut, 1, 0.4)]}
    callback.on_trial_result(iteration=4, trials=[pack], trial=pack, result=_pack_result(pack, rows, 1))
    pack.handle_error(RuntimeError("worker lost"))
    callback.on_trial_error(iteration=5, trials=[pack], trial=pack)
    callback.close()

    runs = _children(tracker)
    assert {name: (run.data.tags["dpsweep.outcome"], run.info.status) for name, run in runs.items()} == {
        "trial_0000": ("failed", "FAILED"),
        "trial_0001": ("completed", "FINISHED"),
        "trial_0002": ("failed", "FAILED"),
        "trial_0003": ("failed", "FAILED"),
    }
    assert trial.error_file and "worker lost" in Path(trial.error_file).read_text()
    assert runs["trial_0000"].data.tags["dpsweep.failure"] == f"trial raised an error; see {trial.error_file}"
    assert runs["trial_0002"].data.tags["dpsweep.failure"] == f"trial raised an error; see {pack.error_file}"
    assert "dpsweep.failure" not in runs["trial_0001"].data.tags
    # Epochs reported before the error stay logged; a member that never reported has a run, without epochs.
    assert _history(tracker, runs["trial_0000"], "val_accuracy") == [(1, 0.3), (2, 0.6)]
    assert _history(tracker, runs["trial_0002"], "val_accuracy") == [(1, 0.4)]
    assert _history(tracker, runs["trial_0003"], "val_accuracy") == []
    assert runs["trial_0003"].data.params == _logged(unstarted)
    assert callback.outcomes == {"failed": 3, "completed": 1}
    assert "trial raised an error" in out.getvalue()


def test_a_write_mlflow_refuses_stops_the_sweep_at_close(tmp_path: Path) -> None:
    """The writes run on a background thread: one MLflow refuses must not vanish there."""
    tracker = _tracker(tmp_path)
    callback, _ = _callback(tracker, total=1)
    planned = _planned("trial_0000", noise=1.0)
    # MLflow refuses a param name with a character outside its set (its run is created first).
    trial = _ray_trial([dataclasses.replace(planned, axis_values={"lr*2": 1.0})], tmp_path / "ray")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    callback.on_trial_result(
        iteration=1, trials=[trial], trial=trial, result=_lone_result(trial, _row(planned, 1, 0.5), 1)
    )
    callback.on_trial_complete(iteration=2, trials=[trial], trial=trial)
    with pytest.raises(MlflowException, match=r"axis\.lr\*2"):
        callback.close()


# ---- run times -----------------------------------------------------------------------------------


def test_a_trials_run_spans_the_times_its_worker_measured_not_the_writes(tmp_path: Path) -> None:
    """A lone trial's and a pack member's run start and end where their rows say, and their
    epochs' metrics are timed as their rows (worker clocks, set here an hour in the past, so that
    the time of the driver's writes cannot pass for them)."""
    tracker = _tracker(tmp_path)
    callback, _ = _callback(tracker, total=3)
    hour_ago = int(time.time() * 1000) - 3_600_000
    lone = _planned("trial_0000", noise=1.0)
    trial = _ray_trial([lone], tmp_path / "ray")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in range(1, EPOCHS + 1):
        row = dataclasses.replace(_row(lone, epoch, 0.5), started_ms=hour_ago, ended_ms=hour_ago + 1000 + 400 * epoch)
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=_lone_result(trial, row, epoch))
    callback.on_trial_complete(iteration=EPOCHS + 1, trials=[trial], trial=trial)

    a, b = _planned("trial_0001", noise=2.0), _planned("trial_0002", noise=3.0)
    pack = _ray_trial([a, b], tmp_path / "ray")
    callback.on_trial_start(iteration=0, trials=[pack], trial=pack)
    rows = {  # b joins the stack at its second epoch, when a slot frees (a width-1 stack's order)
        a.key: [
            dataclasses.replace(_row(a, e, 0.5), started_ms=hour_ago + 10_000, ended_ms=hour_ago + 10_000 + 300 * e)
            for e in range(1, EPOCHS + 1)
        ],
        b.key: [
            dataclasses.replace(_row(b, e, 0.5), started_ms=hour_ago + 20_000, ended_ms=hour_ago + 20_000 + 500 * e)
            for e in range(1, EPOCHS + 1)
        ],
    }
    callback.on_trial_result(iteration=1, trials=[pack], trial=pack, result=_pack_result(pack, rows, 1))
    callback.on_trial_complete(iteration=2, trials=[pack], trial=pack)
    callback.close()

    runs = _children(tracker)
    spans = {name: (run.info.start_time, run.info.end_time) for name, run in runs.items()}
    assert spans == {
        "trial_0000": (hour_ago, hour_ago + 1000 + 400 * EPOCHS),
        "trial_0001": (hour_ago + 10_000, hour_ago + 10_000 + 300 * EPOCHS),
        "trial_0002": (hour_ago + 20_000, hour_ago + 20_000 + 500 * EPOCHS),
    }
    # Each epoch's metrics are timed when its worker measured them, so MLflow's charts over time agree.
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    history = client.get_metric_history(runs["trial_0000"].info.run_id, "val_accuracy")
    assert sorted((m.step, m.timestamp) for m in history) == [
        (e, hour_ago + 1000 + 400 * e) for e in range(1, EPOCHS + 1)
    ]
