"""The Ray Tune callback that forwards a sweep's trials to MLflow and to the progress display.

Every epoch of every trial, packed or not, reaches the driver as a Tune result; the callback
turns the rows a result carries (:func:`sweeps.protocol.rows_of`: a lone trial's one row, or a
pack's members' rows) into one MLflow child run per trial, through
:class:`sweeps.tracking.SweepTracker`, on a background thread (:class:`_BackgroundWriter`) so that
Tune's control loop never waits on MLflow. It ends each trial's run with its outcome
(completed / pruned / stopped_by_budget / failed), records started trials in the privacy ledger,
and shows each finished trial on the progress display.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from ray import tune

from sweeps.driver.progress import SweepProgress
from sweeps.driver.sweep_stats import SweepStats
from sweeps.privacy.ledger import LedgerEntry, PrivacyLedger
from sweeps.protocol import EpochRow, LatestRows, TrialSpec, outcome_of, rows_of, unit_of
from sweeps.results.frontier import Point
from sweeps.tracking import SweepTracker

__all__ = ["TrackingCallback"]


class _BackgroundWriter:
    """Runs tracking writes on one thread, in order, so Tune's control loop never waits on MLflow."""

    def __init__(self, stats: SweepStats) -> None:
        self.stats = stats
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="dpsweep-mlflow", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., Any], **kwargs: Any) -> None:
        self._queue.put((write, kwargs))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            write, kwargs = item
            started = time.perf_counter()
            try:
                if self._error is None:
                    write(**kwargs)
            except BaseException as error:  # noqa: BLE001 - re-raised in close()
                self._error = error
            self.stats.logging_seconds += time.perf_counter() - started
            self._queue.task_done()

    def drain(self) -> None:
        """Wait until every write queued so far is done."""
        self._queue.join()

    def close(self) -> None:
        """Wait for every queued write; raise the first error a write raised."""
        self._queue.put(None)
        self._thread.join()  # the sentinel is never marked done: no drain() after close()
        if self._error is not None:
            raise self._error


class TrackingCallback(tune.Callback):
    """Forwards trial events to the MLflow tracker and to the progress display (sweeps.driver.progress)."""

    def __init__(
        self,
        tracker: SweepTracker,
        stats: SweepStats,
        *,
        total: int | None,
        time_budget_s: float | None = None,
        out: TextIO = sys.stdout,
        ledger: PrivacyLedger | None = None,
        public_seed: bool = False,
        progress: SweepProgress | None = None,
    ):
        # Without a display of the launcher's: one line per trial on ``out``.
        self.progress = progress if progress is not None else _line_per_trial(total, out)
        self.time_budget_s = time_budget_s
        self.ledger = ledger  # the sweep's privacy ledger: each trial is recorded as it starts
        self.public_seed = public_seed
        self.tracker = tracker
        self.stats = stats
        self.total = total
        self.out = out
        self._specs: dict[str, TrialSpec] = {}  # member trial key -> its spec
        self._last_rows = LatestRows()  # member trial key -> its latest epoch row
        self._unlogged: dict[str, list[tuple[int, dict[str, float], int]]] = {}  # epochs not yet sent to MLflow
        self._unlogged_since: dict[str, float] = {}  # member key -> when its oldest unlogged epoch came
        self._shown: set[str] = set()  # member keys with an epoch sent to MLflow already
        # Member key -> (started_ms, ended_ms): its training's span as its worker measured it, so far.
        self._spans: dict[str, tuple[int, int]] = {}
        # Members of running packs that have ended; on resume also every trial that ended before
        # the interruption: a restored pack trains its members again, and a replayed member must
        # not overwrite the outcome it had (a fresh pruning board can judge it otherwise).
        self._finished: set[str] = set(tracker.ended_before)
        self.points: list[Point] = []  # every epoch this process logged, as MLflow's params are (strings)
        self._point_keys: list[str] = []  # the trial key of each point
        self.outcomes: dict[str, int] = {}
        self._writer: _BackgroundWriter | None = None
        self.interrupted = False  # the user pressed Ctrl-C (SIGINT): the sweep is to be resumed

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["out"] = None
        state["_writer"] = None
        state["progress"] = None  # a console and a display thread stay with the launcher
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.out = sys.stdout
        self.progress = _line_per_trial(self.total, self.out)

    def _write(self, write: Callable[..., Any], **kwargs: Any) -> None:
        if self._writer is None:
            self._writer = _BackgroundWriter(self.stats)
        self._writer.submit(write, **kwargs)

    def logged_points(self) -> list[Point]:
        """``points`` with their MLflow run ids: after ``close``, what reading the sweep's runs
        back from MLflow gives when this process logged all of them (no resume, MLflow reached)."""
        return [
            dataclasses.replace(point, run_id=self.tracker.run_id_of(key))
            for point, key in zip(self.points, self._point_keys)
        ]

    def time_budget_reached(self) -> bool:
        return self.time_budget_s is not None and self.stats.wall_seconds() >= self.time_budget_s

    def close(self) -> None:
        """Wait until every tracking write is done (call before reading MLflow back)."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _members(self, trial: Any) -> tuple[TrialSpec, ...]:
        """The trial specs behind a Ray trial: a pack's members, or itself."""
        members = unit_of(trial.config).members
        for spec in members:
            if spec.key not in self._finished:
                self._specs.setdefault(spec.key, spec)
        return members

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        members = self._members(trial)
        if self.ledger is not None:
            # Federated trials have no single DP-SGD mechanism to compose (their clients' ε is per shard).
            self.ledger.record(
                LedgerEntry.from_spec(spec, public_seed=self.public_seed)
                for spec in members
                if spec.kind != "federated"
            )
        # A trial's run is created with its first epoch, which its worker sends at once (a lone
        # trial) or within seconds (a pack): MLflow cannot move a run's start, and its start is
        # to be the trial's, as the worker measured it, not the time Tune scheduled it.

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        members = {spec.key: spec for spec in self._members(trial)}
        # A pack's result holds its running members' epochs since its last one; a lone trial's, its own.
        rows = rows_of(result, next(iter(members)))
        self.stats.train_seconds += result.get("epoch_seconds", 0.0)
        self.stats.eval_seconds += result.get("eval_seconds", 0.0)
        self.stats.setup_seconds += result.get("setup_seconds", 0.0)
        self.stats.report_seconds += result.get("report_seconds", 0.0)
        for key, epochs in rows.items():
            if key in self._finished:
                continue
            for row in epochs:
                self._note_span(key, row)
                if row.diverged is not None or row.replayed:
                    self._last_rows.update(key, row)  # a replayed row was logged before the interruption
                    continue
                last = self._last_rows.get(key)
                if last is not None and last.epoch >= row.epoch:
                    continue  # a pack started over (a member diverged, or its worker died): logged already
                self._last_rows.update(key, row)
                self._log_epoch(members[key], row)
        if result.get("checkpoint_dir_name") or ("members" not in result and not self._shown.issuperset(rows)):
            # A restarted trial resumes after this checkpoint: its epochs so far must reach MLflow.
            # A lone trial's first epoch is shown at once, so that a user sees it started.
            self._flush(list(rows))
        self._shown.update(rows)
        if "members" in result:
            # A pack's member is done when its rows say so: logged and shown then, not when its
            # pack ends (a pack holds several rounds of members).
            for key in rows:
                last = self._last_rows.get(key)
                if key not in self._finished and last is not None and last.ended:
                    self._finished.add(key)
                    self._finish_member(members[key], self._last_rows.pop(key), error=False, error_file=None)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        self._flush([key for key, since in self._unlogged_since.items() if now - since >= self.FLUSH_SECONDS])
        self.progress.tick()

    #: A running trial's epochs reach MLflow at most this long after they arrive, a finished
    #: trial's at once; so the trials of a pack, done in seconds, are logged in one go each.
    FLUSH_SECONDS = 5.0

    def _flush(self, keys: Any = None) -> None:
        for key in list(self._unlogged) if keys is None else keys:
            epochs = self._unlogged.pop(key, None)
            self._unlogged_since.pop(key, None)
            if epochs:
                spec = self._specs[key]
                self._write(
                    self.tracker.log_trial,
                    key=key,
                    name=spec.name,
                    params=spec.params,
                    epochs=epochs,
                    started_ms=self._spans.get(key, (0, 0))[0],
                )

    def _note_span(self, key: str, row: EpochRow) -> None:
        """The trial's first measured start and its latest measured end."""
        if not row.started_ms:
            return
        started, _ = self._spans.get(key, (row.started_ms, 0))
        self._spans[key] = (min(started, row.started_ms), max(row.ended_ms, row.started_ms))

    def _log_epoch(self, spec: TrialSpec, row: EpochRow) -> None:
        self.stats.epochs += 1
        metrics = {"val_accuracy": row.val_accuracy, "epoch_seconds": row.epoch_seconds}
        if row.val_loss is not None:
            metrics["val_loss"] = row.val_loss
        if row.val_accuracy_raw is not None:  # parameter averaging: the last iterate's, beside the average's
            metrics["val_accuracy_raw"] = row.val_accuracy_raw
        # MLflow stores no infinity: a trial without noise logs no ε (its run's params say so).
        metrics.update({f"epsilon_client_{i}": e for i, e in enumerate(row.client_epsilons) if math.isfinite(e)})
        if math.isfinite(row.epsilon):
            metrics["epsilon"] = row.epsilon
        self.points.append(
            Point(
                epsilon=row.epsilon,
                accuracy=row.val_accuracy,
                run_id="",
                trial=spec.name,
                epoch=row.epoch,
                delta=spec.delta,
                accountant=spec.accountant,
                params={k: str(v) for k, v in spec.params.items()},
            )
        )  # as log_trial logs them
        self._point_keys.append(spec.key)
        self.progress.point(self.points[-1])
        # At the time its worker measured it: MLflow's charts over time, like the run's span, are the training's.
        self._unlogged.setdefault(spec.key, []).append((row.epoch, metrics, row.ended_ms))
        self._unlogged_since.setdefault(spec.key, time.monotonic())

    def _finish(self, trial: Any, *, error: bool) -> None:
        members = self._members(trial)
        for spec in members:
            if spec.key in self._finished:
                self._finished.discard(spec.key)
                continue
            row = self._last_rows.pop(spec.key)
            # A pack that errored out may still have finished some members before it did.
            self._finish_member(
                spec, row, error=error and not (row is not None and row.ended), error_file=trial.error_file
            )
        if len(members) == 1 and self._writer is not None:
            # A lone trial's end reaches MLflow before Tune goes on (and saves it as ended): a
            # launcher killed next leaves no backlog of its writes behind what Optuna was told.
            self._writer.drain()

    def _finish_member(self, spec: TrialSpec, row: EpochRow | None, *, error: bool, error_file: Any) -> None:
        outcome = outcome_of(row, error=error)
        tags = {}
        if row is not None and row.diverged is not None:
            tags["dpsweep.failure"] = row.diverged
        elif error:
            tags["dpsweep.failure"] = f"trial raised an error; see {error_file}"
        started_ms, ended_ms = self._spans.pop(spec.key, (0, 0))
        self._write(
            self.tracker.log_trial,
            key=spec.key,
            name=spec.name,
            params=spec.params,
            epochs=self._unlogged.pop(spec.key, []),
            outcome=outcome,
            tags=tags,
            started_ms=started_ms,
            ended_ms=ended_ms,
        )
        self._unlogged_since.pop(spec.key, None)
        self._specs.pop(spec.key, None)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.stats.trials_finished += 1
        name = spec.name
        if row is not None and row.diverged is None:
            privacy = (
                f"ε = {row.epsilon:.3f} (δ = {spec.delta:g}, {spec.accountant.upper()})"
                if math.isfinite(row.epsilon)
                else "ε = ∞ (no noise)"
            )
            detail = f"epoch {row.epoch}/{row.epochs_planned}  val acc {row.val_accuracy:.4f}  {privacy}"
        else:
            detail = tags.get("dpsweep.failure", "")
        self.progress.trial_ended(name=name, outcome=outcome, detail=detail)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)


def _line_per_trial(total: int | None, out: TextIO) -> SweepProgress:
    from rich.console import Console

    return SweepProgress(total=total, verbose=True, live=False, interval_s=None, console=Console(file=out))
