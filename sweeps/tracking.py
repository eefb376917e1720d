"""MLflow tracking of a sweep: one parent run, one child run per trial, the frontier on the parent.

This is the only module of dpsweep that talks to MLflow. Child runs are keyed by a hash of the
trial's configuration (tag ``dpsweep.trial_key``), so a resumed sweep finds and continues the
runs it started instead of creating duplicates.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from sweeps.frontier import Point

__all__ = ["SweepTracker", "trial_key", "OUTCOMES"]

# What happened to a trial, as the tag `dpsweep.outcome`.
OUTCOMES = ("running", "completed", "stopped_by_budget", "pruned", "skipped_over_budget", "failed")
_PARENT = "mlflow.parentRunId"


def trial_key(train_config: Mapping[str, Any]) -> str:
    """A stable identity for a trial: the hash of its flat configuration."""
    text = json.dumps(dict(train_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _params(values: Mapping[str, Any]) -> list[Param]:
    # MLflow caps a param value at 6000 characters; ours are short scalars.
    return [Param(str(k), "None" if v is None else str(v)) for k, v in sorted(values.items())]


class SweepTracker:
    """Writes a sweep into an MLflow experiment. Picklable: the client is created lazily."""

    def __init__(self, *, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
            )
        return self._experiment_id

    # ---- the sweep (parent run) --------------------------------------------------------------

    def start_sweep(self, *, sweep_id: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Create the parent run, or reopen the one with the same ``sweep_id`` (resume)."""
        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`dpsweep.sweep_id` = '{sweep_id}'", max_results=1
        )
        if existing:
            self.parent_run_id = existing[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            return self.parent_run_id
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={"dpsweep.sweep_id": sweep_id, "dpsweep.role": "sweep", **tags}
        )
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=_params(params))
        return self.parent_run_id

    def end_sweep(self, *, status: str = "FINISHED") -> None:
        assert self.parent_run_id is not None
        self.client.set_terminated(self.parent_run_id, status=status)

    def log_sweep_metrics(self, metrics: Mapping[str, float]) -> None:
        assert self.parent_run_id is not None
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)]
        self.client.log_batch(self.parent_run_id, metrics=batch)

    def log_sweep_tags(self, tags: Mapping[str, str]) -> None:
        assert self.parent_run_id is not None
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str) -> None:
        assert self.parent_run_id is not None
        self.client.log_artifact(self.parent_run_id, path)

    # ---- trials (child runs) -----------------------------------------------------------------

    def _find_trial(self, key: str) -> str | None:
        assert self.parent_run_id is not None
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{_PARENT}` = '{self.parent_run_id}' and tags.`dpsweep.trial_key` = '{key}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def start_trial(self, *, key: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str] = {}) -> str:
        """The child run for this trial: reopened if it exists (retry/resume), else created."""
        run_id = self._find_trial(key)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "dpsweep.outcome", "running")
            return run_id
        assert self.parent_run_id is not None
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={_PARENT: self.parent_run_id, "dpsweep.trial_key": key, "dpsweep.role": "trial",
                  "dpsweep.outcome": "running", **tags},
        )
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def log_epoch(self, run_id: str, *, step: int, metrics: Mapping[str, float]) -> None:
        """One batched write per epoch. Non-finite values (ε = ∞ without noise) are not logged."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        self.client.log_batch(run_id, metrics=batch)

    def end_trial(self, run_id: str, *, outcome: str, tags: Mapping[str, str] = {}) -> None:
        assert outcome in OUTCOMES, outcome
        self.client.log_batch(
            run_id, tags=[RunTag("dpsweep.outcome", outcome), *(RunTag(k, str(v)) for k, v in tags.items())]
        )
        status = RunStatus.to_string(RunStatus.FAILED if outcome == "failed" else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status=status)

    def log_skipped(self, *, key: str, name: str, params: Mapping[str, Any], planned_epsilon: float, reason: str) -> str:
        """Record a trial that was never started because its planned ε exceeds the budget."""
        run_id = self._find_trial(key)
        if run_id is None:
            run_id = self.start_trial(key=key, name=name, params=params)
        self.log_epoch(run_id, step=0, metrics={"planned_epsilon": planned_epsilon})
        self.end_trial(run_id, outcome="skipped_over_budget", tags={"dpsweep.skip_reason": reason})
        return run_id

    def close_orphans(self) -> int:
        """Mark child runs still 'RUNNING' (their process died) as KILLED; returns how many."""
        closed = 0
        for run in self.trial_runs():
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "dpsweep.outcome", "failed")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed += 1
        return closed

    # ---- reading back ------------------------------------------------------------------------

    def trial_runs(self) -> list[Any]:
        assert self.parent_run_id is not None
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{_PARENT}` = '{self.parent_run_id}'", max_results=50_000
        )

    def points(self) -> list[Point]:
        """Every (ε, accuracy) pair any trial reached at any epoch, read back from the store."""
        points: list[Point] = []
        for run in self.trial_runs():
            if run.data.tags.get("dpsweep.outcome") == "skipped_over_budget":
                continue
            accuracy = {m.step: m.value for m in self.client.get_metric_history(run.info.run_id, "test_accuracy")}
            epsilon = {m.step: m.value for m in self.client.get_metric_history(run.info.run_id, "epsilon")}
            for step, value in sorted(accuracy.items()):
                points.append(Point(
                    epsilon=epsilon.get(step, math.inf), accuracy=value, run_id=run.info.run_id,
                    trial=run.info.run_name, epoch=step, params=dict(run.data.params),
                ))
        return points

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.trial_runs():
            outcome = run.data.tags.get("dpsweep.outcome", "running")
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts
