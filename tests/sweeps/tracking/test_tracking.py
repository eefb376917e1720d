"""SweepTracker against a real sqlite MLflow store: one trial's writes, retries and resumes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweeps.tracking import SweepTracker
from tests._mlflow_store import empty_sqlite_store

PARAMS = {"lr": 0.5, "max_grad_norm": 1.0, "seed": None}


def _tracker(tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(tracking_uri=empty_sqlite_store(tmp_path / "mlflow.db"), experiment="dpsweep")
    tracker.start_sweep(sweep_id="s1", run_name="s1", params={"space": "t"}, tags={})
    return tracker


def _epochs(steps: range) -> list[tuple[int, dict[str, float]]]:
    return [(s, {"val_accuracy": s / 10, "epsilon": 0.1 * s}) for s in steps]


def test_a_trial_logged_whole_is_one_finished_run_with_its_params_epochs_and_outcome(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    tracker.log_trial(
        key="k1",
        name="trial_0000",
        params=PARAMS,
        epochs=_epochs(range(1, 4)),
        outcome="pruned",
        tags={"dpsweep.note": "x"},
    )
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(tracker.run_id_of("k1"))
    assert run.info.status == "FINISHED" and run.info.run_name == "trial_0000"
    assert run.data.tags["dpsweep.outcome"] == "pruned" and run.data.tags["dpsweep.note"] == "x"
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert run.data.params == {"lr": "0.5", "max_grad_norm": "1.0", "seed": "None"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    # The store keeps a write-ahead log (one append per commit, not a journal file per commit).
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_running_trial_shows_then_ends_and_a_resumed_one_logs_no_epoch_twice(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    tracker.log_trial(key="k1", name="trial_0000", params=PARAMS, epochs=_epochs(range(1, 3)))
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run_id = tracker.run_id_of("k1")
    running = client.get_run(run_id)
    assert running.info.status == "RUNNING" and running.data.tags["dpsweep.outcome"] == "running"
    tracker.log_trial(key="k1", name="trial_0000", params=PARAMS, epochs=_epochs(range(3, 5)), outcome="completed")
    assert client.get_run(run_id).info.status == "FINISHED"

    # A resumed sweep (a new tracker on the same parent) finds the run and skips epochs it holds.
    again = _tracker(tmp_path)
    assert again.parent_run_id == tracker.parent_run_id and again.run_id_of("k1") == run_id
    again.log_trial(key="k1", name="trial_0000", params=PARAMS, epochs=_epochs(range(1, 6)), outcome="completed")
    steps = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4, 5]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_runs_start_and_end_are_the_measured_ones_and_a_resume_keeps_them(tmp_path: Path) -> None:
    """Times given (the worker's) are the run's; without them, the write's. A resumed sweep's
    writes to a run that had ended keep the start and the end it had."""
    tracker = _tracker(tmp_path)
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    day_ago = int(time.time() * 1000) - 86_400_000
    tracker.log_trial(key="k1", name="trial_0000", params=PARAMS, epochs=_epochs(range(1, 3)), started_ms=day_ago)
    tracker.log_trial(
        key="k1",
        name="trial_0000",
        params=PARAMS,
        epochs=_epochs(range(3, 4)),
        outcome="completed",
        started_ms=day_ago,
        ended_ms=day_ago + 4_321,
    )
    run = client.get_run(tracker.run_id_of("k1"))
    assert (run.info.start_time, run.info.end_time) == (day_ago, day_ago + 4_321)

    before = int(time.time() * 1000)
    tracker.log_trial(key="k2", name="trial_0001", params=PARAMS, outcome="skipped_over_budget")
    unmeasured = client.get_run(tracker.run_id_of("k2")).info
    assert before <= unmeasured.start_time <= unmeasured.end_time <= int(time.time() * 1000)

    again = _tracker(tmp_path)  # resumed: the run had ended
    assert "k1" in again.ended_before
    again.log_trial(
        key="k1",
        name="trial_0000",
        params=PARAMS,
        epochs=_epochs(range(1, 4)),
        outcome="completed",
        started_ms=day_ago + 50_000,
        ended_ms=day_ago + 60_000,
    )
    kept = client.get_run(run.info.run_id)
    assert kept.info.status == "FINISHED"
    assert (kept.info.start_time, kept.info.end_time) == (day_ago, day_ago + 4_321)


def test_an_own_dataset_is_an_input_of_the_parent_run_and_a_wide_one_still_logs(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    tracker.log_dataset(name="t.csv", source="/data/t.csv", loader=None, digest="0123abcd", input_shape=(300,))
    wide = {"format": "csv", "path": "/data/t.csv", "bounds": {"low": 0.0, "high": [1234.5678] * 1000}}
    tracker.log_trial(key="k1", name="trial_0000", params={**PARAMS, "dataset": wide}, outcome="completed")
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    (logged,) = client.get_run(tracker.parent_run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("t.csv", "0123abcd")
    assert '"shape": [-1, 300]' in logged.dataset.schema and logged.tags[0].value == "training"
    dataset_param = client.get_run(tracker.run_id_of("k1")).data.params["dataset"]
    assert dataset_param.startswith("{'format': 'csv', 'path': '/data/t.csv'") and len(dataset_param) == 6000
