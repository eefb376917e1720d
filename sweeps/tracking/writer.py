"""The MLflow writer of a sweep: one parent run, one child run per trial, the frontier on the parent.

Writes are idempotent. Child runs are keyed by a hash of the trial's configuration (tag
``dpsweep.trial_key``) and the parent by the sweep's name (tag ``dpsweep.sweep_id``), so a
resumed sweep, a retried trial or a replayed journal finds and continues its runs instead of
creating duplicates. A write MLflow cannot take now goes to the journal
(:mod:`sweeps.tracking.journal`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from sweeps.privacy.ledger import CONFIRMATION_ROLES
from sweeps.results.frontier import Point
from sweeps.tracking.errors import TrackingUnavailable, check_uri, is_unreachable, refusal
from sweeps.tracking.journal import JournaledWrites
from sweeps.tracking.sqlite import fast_sqlite

__all__ = ["SweepTracker", "OUTCOMES", "default_tracking_uri", "limit_http_retries"]

# What happened to a trial, as the tag `dpsweep.outcome`.
OUTCOMES = (
    "running", "completed", "stopped_by_budget", "pruned", "skipped_over_budget", "failed", "failed_oom", "interrupted",
)  # fmt: skip
_PARENT = "mlflow.parentRunId"


def default_tracking_uri() -> str:
    """MLflow's own default tracking URI (``MLFLOW_TRACKING_URI``, else its local default)."""
    return mlflow.get_tracking_uri()


def limit_http_retries() -> None:
    """A dead tracking server should cost seconds, not MLflow's default minutes of retries per
    call: the journal keeps the writes. Users can still override these variables.

    MLflow reads them at every HTTP request, so setting them before the tracker's first request
    is enough (:attr:`SweepTracker.client` calls this). They used to be set when
    ``sweeps.tracking`` was imported, which changed the environment of every process that merely
    imported the package (and of the Ray workers a launcher started after that) for writes only
    the tracker makes.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def _is_confirmation(run: Any) -> bool:
    """A confirmation stage's retraining or refit (sweeps.results.confirm), not a search trial."""
    return run.data.tags.get("dpsweep.stage") in CONFIRMATION_ROLES


def _params(values: Mapping[str, Any]) -> list[Param]:
    # An own dataset's mapping (per-feature bounds of a wide table) may exceed what MLflow takes for
    # one param value; its head names the files, and its digest is on the parent run's inputs.
    return [Param(str(k), ("None" if v is None else str(v))[:MAX_PARAM_VAL_LENGTH]) for k, v in sorted(values.items())]


class SweepTracker(JournaledWrites):
    """Writes a sweep into an MLflow experiment. Picklable: the client is created lazily."""

    def __init__(self, *, tracking_uri: str, experiment: str, journal: str | os.PathLike | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._init_journal(journal)
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self.sweep_arguments: dict[str, Any] | None = None  # start_sweep's arguments, to reopen the parent
        self.parent_run_id: str | None = None
        self._run_ids: dict[str, str] = {}  # trial key -> child run id
        self._last_step: dict[str, int] = {}  # trial key -> last epoch logged (for reopened runs)
        self._opened: set[str] = set()  # trial keys whose run this tracker created or reopened
        self.ended_before: set[str] = set()  # trial keys whose run had ended when a resumed sweep reopened the parent
        self._kept_end: dict[str, int] = {}  # trial key -> the end (ms) its run had before a resume: it stays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_lock"] = None
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # Here, not in __init__: every MLflow call of the tracker goes through this client,
            # also in a copy unpickled in another process (where __init__ never ran).
            limit_http_retries()
            fast_sqlite(self.tracking_uri)
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
        """Create the parent run, or reopen the one with the same ``sweep_id`` (resume).

        Unlike later writes this one is not journaled: a sweep that cannot reach its tracking
        store, or whose account the store refuses (TrackingRefused), fails before training anything.
        """
        check_uri(self.tracking_uri)
        self.sweep_arguments = {"sweep_id": sweep_id, "run_name": run_name, "params": dict(params), "tags": dict(tags)}
        try:
            return self._open_parent(**self.sweep_arguments)
        except Exception as error:  # noqa: BLE001
            if is_unreachable(error):
                raise TrackingUnavailable(f"Cannot reach MLflow at {self.tracking_uri}: {error}") from error
            refused = refusal(error, tracking_uri=self.tracking_uri, experiment=self.experiment)
            if refused is not None:
                raise refused from error
            raise

    def _open_parent(self, *, sweep_id: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`dpsweep.sweep_id` = '{sweep_id}'", max_results=1
        )
        if existing:
            self.parent_run_id = existing[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self._load_trials()
            return self.parent_run_id
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={"dpsweep.sweep_id": sweep_id, "dpsweep.role": "sweep", **tags}
        )
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=_params(params))
        self._all_trials_known = True  # a new parent has no children but the ones this tracker makes
        return self.parent_run_id

    def _load_trials(self) -> None:
        """Map every existing child run by trial key in one paged query (not one query per trial)."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{_PARENT}` = '{self.parent_run_id}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                key = run.data.tags.get("dpsweep.trial_key")
                if key is not None:
                    self._run_ids.setdefault(key, run.info.run_id)
                    # KILLED runs were interrupted (close_orphans) and run again; these had an outcome.
                    if run.info.status in ("FINISHED", "FAILED"):
                        self.ended_before.add(key)
            token = page.token
            if not token:
                break
        self._all_trials_known = True

    def end_sweep(self, *, status: str = "FINISHED") -> None:
        self._write("end_sweep", status=status)

    def _end_sweep(self, *, status: str) -> None:
        self.client.set_terminated(self.parent_run_id, status=status)

    def log_sweep_metrics(self, metrics: Mapping[str, float]) -> None:
        self._write("log_sweep_metrics", metrics={k: float(v) for k, v in metrics.items()})

    def _log_sweep_metrics(self, *, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)]
        self.client.log_batch(self.parent_run_id, metrics=batch)

    def log_sweep_tags(self, tags: Mapping[str, Any]) -> None:
        self._write("log_sweep_tags", tags={k: str(v) for k, v in tags.items()})

    def _log_sweep_tags(self, *, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def tag_runs(self, tags_by_run_id: Mapping[str, Mapping[str, Any]]) -> None:
        """Set tags on runs of this sweep by run id (the parent's or its children's): one batch per run."""
        self._write(
            "tag_runs",
            tags_by_run_id={
                run_id: {k: str(v) for k, v in tags.items()} for run_id, tags in tags_by_run_id.items() if tags
            },
        )

    def _tag_runs(self, *, tags_by_run_id: Mapping[str, Mapping[str, str]]) -> None:
        for run_id, tags in tags_by_run_id.items():
            # MLflow takes at most 100 tags per batch.
            items = [RunTag(k, v) for k, v in tags.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(run_id, tags=items[start : start + 100])

    def log_dataset(
        self, *, name: str, source: str, loader: str | None, digest: str, input_shape: Sequence[int]
    ) -> None:
        """Record a dataset the sweep trains on as an input of the parent run (``mlflow.log_input``): its name,
        source, digest and schema (:mod:`sweeps.tracking.datasets`), never a value of it."""
        self._write(
            "log_dataset", name=name, source=source, loader=loader, digest=digest, input_shape=list(input_shape)
        )

    def _log_dataset(self, *, name: str, source: str, loader: str | None, digest: str, input_shape: list[int]) -> None:
        from sweeps.tracking.datasets import dataset_input

        entry = dataset_input(name=name, source=source, loader=loader, digest=digest, input_shape=input_shape)
        self.client.log_inputs(self.parent_run_id, datasets=[entry])

    def log_artifact(self, path: str) -> None:
        """Attach a local file to the parent run (journaled by path: keep the file)."""
        self._write("log_artifact", path=str(path))

    def _log_artifact(self, *, path: str) -> None:
        self.client.log_artifact(self.parent_run_id, path)

    def register_model(
        self, *, weights: str, name: str, alias: str, tags: Mapping[str, Any], run_tag: str | None = None
    ) -> None:
        """Log the model kept at ``weights`` (sweeps.results.released_model) on the child run of the
        run that trained it (a refit run, or a private selection's selected trial) and register it as
        ``name`` with ``alias`` and ``tags`` (:func:`sweeps.tracking.model_registry.register_model`:
        one version per run, found again by the tag ``run_tag``, however often this is called).
        Journaled by path: keep the file. A server without a Model Registry is said in one line,
        once, and the sweep goes on."""
        self._write(
            "register_model",
            weights=str(weights),
            name=name,
            alias=alias,
            tags={k: str(v) for k, v in tags.items()},
            **({"run_tag": run_tag} if run_tag is not None else {}),
        )

    def _register_model(
        self, *, weights: str, name: str, alias: str, tags: Mapping[str, str], run_tag: str | None = None
    ) -> None:
        # Imported here: torch and MLflow's model flavours are for the end of a sweep, not every import.
        from sweeps.results.released_model import load_weights
        from sweeps.tracking.model_registry import has_no_registry, register_model

        if self.__dict__.get("_no_registry"):
            return
        kept = load_weights(Path(weights))
        run_id = self._find_trial(kept.run_key)
        assert run_id is not None, f"no run with trial key {kept.run_key} to log its model on"
        try:
            register_model(
                self.client,
                tracking_uri=self.tracking_uri,
                run_id=run_id,
                model=kept.model,
                input_shape=kept.input_shape,
                name=name,
                alias=alias,
                tags=tags,
                **({"run_tag": run_tag} if run_tag is not None else {}),
            )
        except Exception as error:  # noqa: BLE001 - re-raised unless it means "no registry here"
            if not has_no_registry(error):
                raise
            self._no_registry = True
            print(
                f"MLflow at {self.tracking_uri} has no Model Registry ({type(error).__name__}): the models are not "
                f"registered; their weights stay in {Path(weights).parent}.",
                file=sys.stderr,
            )

    # ---- trials (child runs), addressed by trial key -------------------------------------------

    def _find_trial(self, key: str) -> str | None:
        if key in self._run_ids or self.__dict__.get("_all_trials_known"):
            return self._run_ids.get(key)
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{_PARENT}` = '{self.parent_run_id}' and tags.`dpsweep.trial_key` = '{key}'",
            max_results=1,
        )
        if found:
            self._run_ids[key] = found[0].info.run_id
        return self._run_ids.get(key)

    def run_id_of(self, key: str) -> str:
        """The child run id of a trial this tracker has written ("" if none)."""
        return self._run_ids.get(key, "")

    def log_trial(
        self,
        *,
        key: str,
        name: str,
        params: Mapping[str, Any],
        epochs: list[tuple[Any, ...]] = (),
        outcome: str | None = None,
        tags: Mapping[str, str] | None = None,
        started_ms: int | None = None,
        ended_ms: int | None = None,
    ) -> None:
        """Everything new about one trial, in as few MLflow calls as it takes: its child run
        opened (created with its params, or reopened on a retry or resume), ``epochs`` logged as
        (step, metrics) or (step, metrics, Unix epoch ms its worker measured them at), and, given
        an ``outcome``, the run ended with that outcome and ``tags``.

        ``started_ms`` and ``ended_ms`` (Unix epoch ms, measured where the trial trained) become a
        new run's start and an ended run's end, so that its Duration is the trial's; without them,
        the time of the write. A run that exists keeps its start (a resumed sweep's, a retry's).

        A trial of a pack usually arrives whole: then it costs three calls (create, one batch,
        end), against one per write; on a small machine the per-call cost of MLflow's sqlite
        store took more CPU than the trials' training (``docs/benchmarks.md``). Non-finite values
        (ε = ∞) are not logged.
        """
        assert outcome is None or outcome in OUTCOMES, outcome
        self._write(
            "log_trial",
            key=key,
            name=name,
            params={k: str(v) for k, v in params.items()},
            epochs=[
                [int(step), {k: float(v) for k, v in metrics.items()}, *(int(w) for w in when if w)]
                for step, metrics, *when in epochs
            ],
            outcome=outcome,
            tags={k: str(v) for k, v in (tags or {}).items()},
            timestamp=int(time.time() * 1000),
            started_ms=int(started_ms) if started_ms else None,
            ended_ms=int(ended_ms) if ended_ms else None,
        )

    def _log_trial(
        self,
        *,
        key: str,
        name: str,
        params: Mapping[str, str],
        epochs: list[list[Any]],
        outcome: str | None,
        tags: Mapping[str, str],
        timestamp: int,
        started_ms: int | None = None,
        ended_ms: int | None = None,
    ) -> None:
        run_id = self._find_trial(key)
        end_tags = [RunTag("dpsweep.outcome", outcome), *(RunTag(k, v) for k, v in tags.items())] if outcome else []
        new_params: list[Param] = []
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=name,
                start_time=started_ms or timestamp,
                tags={
                    _PARENT: self.parent_run_id,
                    "dpsweep.trial_key": key,
                    "dpsweep.role": "trial",
                    "dpsweep.outcome": outcome or "running",
                    **(tags if outcome else {}),
                },
            )
            run_id = self._run_ids[key] = run.info.run_id
            self._opened.add(key)
            new_params, end_tags = _params(params), []
        elif key not in self._opened:
            if not self._reopen_trial(key, run_id):
                # Created by a call whose answer was lost (the server went away mid-request):
                # the run exists without the params that call would have logged next.
                new_params = _params(params)
        last = self._last_step.get(key, -1)
        # An epoch logged before this run was reopened comes again when its trial starts over.
        metrics = [
            Metric(k, v, when[0] if when else timestamp, step)
            for step, values, *when in epochs
            if step > last or "val_accuracy" not in values
            for k, v in values.items()
            if math.isfinite(v)
        ]
        # MLflow takes at most 1000 entries per batch, 100 of them params and 100 tags.
        room = 1000 - len(new_params) - len(end_tags)
        if new_params or end_tags or metrics:
            self.client.log_batch(run_id, params=new_params, tags=end_tags, metrics=metrics[:room])
        for start in range(room, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        if outcome is not None:
            status = RunStatus.FAILED if outcome in ("failed", "failed_oom") else RunStatus.FINISHED
            end = self.__dict__.setdefault("_kept_end", {}).pop(key, None) or ended_ms
            self.client.set_terminated(run_id, status=RunStatus.to_string(status), end_time=end)
            self._opened.discard(key)  # a later write (a retried trial) reopens the run

    def _reopen_trial(self, key: str, run_id: str) -> bool:
        """A trial's run from before (a retry, a resumed sweep): running again; remember its last
        epoch. Returns whether the run has its params."""
        before = self.client.get_run(run_id)
        if key in self.ended_before and before.info.end_time:
            # Its outcome was logged before the resume: so was its end, measured then, which stays.
            self.__dict__.setdefault("_kept_end", {})[key] = before.info.end_time
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "dpsweep.outcome", "running")
        history = self.client.get_metric_history(run_id, "val_accuracy")
        self._last_step[key] = max((m.step for m in history), default=0)
        self._opened.add(key)
        return bool(before.data.params)

    def log_skipped(
        self, *, key: str, name: str, params: Mapping[str, Any], planned_epsilon: float, reason: str
    ) -> None:
        """Record a trial that was never started because its planned ε exceeds the budget."""
        self._write(
            "log_skipped",
            key=key,
            name=name,
            params={k: str(v) for k, v in params.items()},
            planned_epsilon=float(planned_epsilon),
            reason=reason,
        )

    def _log_skipped(
        self, *, key: str, name: str, params: Mapping[str, Any], planned_epsilon: float, reason: str
    ) -> None:
        # The planned ε's accountant and δ are in the run's params (``accountant``, ``delta``), and
        # the skip reason (EpsilonBudget.rejects) names both beside the ε.
        assert {"accountant", "delta"} <= set(params), "a planned ε is logged with its accountant and δ"
        self._log_trial(
            key=key,
            name=name,
            params=params,
            epochs=[[0, {"planned_epsilon": planned_epsilon}]],
            outcome="skipped_over_budget",
            tags={"dpsweep.skip_reason": reason},
            timestamp=int(time.time() * 1000),
        )

    def close_orphans(self, *, outcome: str = "failed") -> int:
        """Mark child runs still 'RUNNING' (their process died, or the sweep was interrupted) as
        KILLED with this outcome; returns how many. A resumed sweep reopens them."""
        closed = 0
        for run in self.trial_runs():
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "dpsweep.outcome", outcome)
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed += 1
        return closed

    # ---- reading back ------------------------------------------------------------------------

    def trial_runs(self) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{_PARENT}` = '{self.parent_run_id}'", max_results=50_000
        )

    def points(self) -> list[Point]:
        """Every (ε, validation accuracy) pair any search trial reached at any epoch, read back from the store."""
        points: list[Point] = []
        for run in self.trial_runs():
            if run.data.tags.get("dpsweep.outcome") == "skipped_over_budget" or _is_confirmation(run):
                continue
            # A step logged twice (an epoch re-reported after a restore) counts once.
            accuracy = {m.step: m.value for m in self.client.get_metric_history(run.info.run_id, "val_accuracy")}
            epsilon = {m.step: m.value for m in self.client.get_metric_history(run.info.run_id, "epsilon")}
            for step, value in sorted(accuracy.items()):
                params = dict(run.data.params)
                points.append(
                    Point(
                        epsilon=epsilon.get(step, math.inf),
                        accuracy=value,
                        run_id=run.info.run_id,
                        trial=run.info.run_name,
                        epoch=step,
                        params=params,
                        delta=float(params["delta"]) if "delta" in params else None,
                        accountant=params.get("accountant"),
                    )
                )
        return points

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.trial_runs():
            if _is_confirmation(run):
                continue
            outcome = run.data.tags.get("dpsweep.outcome", "running")
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts
