"""Frontier tags and filters against a real MLflow store: the documented filter strings find the runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.results.frontier import Point, best_per_bucket, pareto_front
from sweeps.tracking import SweepTracker
from sweeps.tracking.tags import (
    BEST_FILTER,
    FRONTIER_FILTER,
    MAX_NOTE_CHARS,
    best_filter,
    frontier_tags,
    sweep_note,
)
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import MlflowServer, TcpProxy


def _point(run: str, epoch: int, epsilon: float, accuracy: float) -> Point:
    return Point(epsilon=epsilon, accuracy=accuracy, run_id=run, trial=f"trial_{run}", epoch=epoch)


# Run "a" is on the frontier twice and best for ε ≤ 0.5 and ε ≤ 1; "b" best for 3; "c" (ε 0.3,
# the number a LIKE '%3%' on one list-valued tag would wrongly match) best for 0.3; "d", "e" are dominated.
POINTS = [
    _point("c", 1, 0.29, 0.50),
    _point("a", 1, 0.4, 0.70),
    _point("a", 2, 0.8, 0.80),
    _point("b", 3, 2.5, 0.90),
    _point("d", 4, 2.9, 0.60),
    _point("e", 1, 7.0, 0.85),
]
BUCKETS = [0.3, 0.5, 1.0, 3.0]


def test_frontier_tags_one_tag_per_bound_and_the_frontier_epochs() -> None:
    tags = frontier_tags(pareto_front(POINTS), best_per_bucket(POINTS, BUCKETS))
    assert set(tags) == {"a", "b", "c"}
    assert tags["a"] == {
        "dpsweep.frontier": "true",
        "dpsweep.frontier_epochs": "1, 2",
        "dpsweep.best_for_epsilon": "0.5, 1",
        "dpsweep.best_for_epsilon_0.5": "true",
        "dpsweep.best_for_epsilon_1": "true",
    }
    assert tags["c"]["dpsweep.best_for_epsilon_0.3"] == "true" and tags["b"]["dpsweep.best_for_epsilon"] == "3"
    # Points whose run id is unknown (logged while MLflow was away) are left out, not tagged "".
    assert frontier_tags([_point("", 1, 1.0, 0.9)], [(1.0, _point("", 1, 1.0, 0.9))]) == {}


def _sweep(tracker: SweepTracker, runs: list[str]) -> dict[str, str]:
    tracker.start_sweep(sweep_id="s1", run_name="s1", params={"space": "t"}, tags={})
    for run in runs:
        tracker.log_trial(
            key=run,
            name=f"trial_{run}",
            params={"lr": 1.0},
            epochs=[(1, {"val_accuracy": 0.5, "epsilon": 1.0})],
            outcome="completed",
        )
    return {run: tracker.run_id_of(run) for run in runs}


def _with_run_ids(ids: dict[str, str]) -> list[Point]:
    return [
        Point(epsilon=p.epsilon, accuracy=p.accuracy, run_id=ids[p.run_id], trial=p.trial, epoch=p.epoch)
        for p in POINTS
    ]


def _names(client: MlflowClient, experiment_id: str, filter_string: str) -> list[str]:
    return sorted(r.info.run_name for r in client.search_runs([experiment_id], filter_string, max_results=1000))


def test_the_documented_filters_find_exactly_the_tagged_runs_in_mlflow(tmp_path: Path) -> None:
    tracker = SweepTracker(tracking_uri=empty_sqlite_store(tmp_path / "mlflow.db"), experiment="dpsweep")
    points = _with_run_ids(_sweep(tracker, ["a", "b", "c", "d", "e"]))
    tracker.tag_runs(frontier_tags(pareto_front(points), best_per_bucket(points, BUCKETS)))
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    experiment = tracker.experiment_id
    assert _names(client, experiment, FRONTIER_FILTER) == ["trial_a", "trial_b", "trial_c"]
    assert _names(client, experiment, BEST_FILTER) == ["trial_a", "trial_b", "trial_c"]
    assert _names(client, experiment, best_filter(3)) == ["trial_b"]
    assert _names(client, experiment, best_filter(0.3)) == ["trial_c"]  # backquoted: the key holds a dot
    assert _names(client, experiment, best_filter(0.5)) == _names(client, experiment, best_filter(1.0)) == ["trial_a"]
    # Why one tag per bound: a LIKE on the list-valued tag also matches 0.3 when asked for 3.
    assert _names(client, experiment, "tags.`dpsweep.best_for_epsilon` LIKE '%3%'") == ["trial_b", "trial_c"]
    # And the combination a user narrows to: the frontier within a parent sweep.
    both = f"{FRONTIER_FILTER} and tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'"
    assert len(_names(client, experiment, both)) == 3


def test_the_note_holds_the_summary_and_the_filters_and_fits_mlflow(tmp_path: Path) -> None:
    summary = "Accuracy-vs-ε frontier (δ = 1e-05, PRV accountant): 2 point(s)\n  0.400  0.7000\n\n  best with ε ≤ 1"
    note = sweep_note(title="s1: space t", summary=summary, details=["Privacy of releasing ...: ε = 12"])
    assert note.startswith("### s1: space t\n\n```\nAccuracy-vs-ε frontier")
    assert "  best with ε ≤ 1\n```" in note and "```\nPrivacy of releasing ...: ε = 12\n```" in note
    # Each filter alone on a line of a fenced block (they hold backquotes): copied whole, nothing else.
    assert f"Runs on the frontier:\n```\n{FRONTIER_FILTER}\n```" in note
    assert f"Each ε bound's best:\n```\n{BEST_FILTER}\n```" in note
    # A frontier table too long for one MLflow tag loses lines from its middle, and says so.
    rows = [f"{i / 100:.3f}  0.{i:04d}  trial_{i:04d}  {i % 20}  1.234  5.678" for i in range(400)]
    long = sweep_note(title="t", summary="\n".join(["header", *rows, "", "  best with ε ≤ 8: acc 0.97"]))
    assert len(long) <= MAX_NOTE_CHARS and "lines left out: frontier.csv has them all" in long
    assert "header" in long and "best with ε ≤ 8: acc 0.97" in long and rows[0] in long
    tracker = SweepTracker(tracking_uri=empty_sqlite_store(tmp_path / "mlflow.db"), experiment="dpsweep")
    _sweep(tracker, [])
    tracker.log_sweep_tags({"mlflow.note.content": long})
    stored = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.parent_run_id)
    assert stored.data.tags["mlflow.note.content"] == long


@pytest.mark.slow  # a real MLflow server of its own
def test_tags_written_while_mlflow_is_away_are_journaled_and_replayed(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    server.start()
    proxy = TcpProxy(server.port)
    proxy.start()
    try:
        tracker = SweepTracker(tracking_uri=proxy.uri, experiment="dpsweep", journal=tmp_path / "journal.jsonl")
        ids = _sweep(tracker, ["a", "b"])
        proxy.cut()
        tracker.tag_runs({ids["a"]: {"dpsweep.frontier": "true"}})
        assert tracker.offline and "tag_runs" in (tmp_path / "journal.jsonl").read_text()
        proxy.restore()
        assert tracker.flush() == 1 and not tracker.offline
        client = MlflowClient(tracking_uri=server.uri)
        assert _names(client, tracker.experiment_id, FRONTIER_FILTER) == ["trial_a"]
    finally:
        proxy.cut()
        server.stop()
