"""Running a sweep's trials on Ray Tune: the only module of dpsweep that drives Ray.

Trials run as Ray Tune function trainables (local Ray by default, a cluster with ``address``);
trials of a small model run several at once as packs (:mod:`sweeps.planning.packing`). A Tune callback in
the driver forwards every epoch of every trial, packed or not, to the MLflow tracker, so logging
happens off the training path, and prints one progress line per finished trial. Pruning
decisions come from one pruning board (a Ray actor), asked by the driver for lone trials and by
the workers for the members of packs, so all trials of a sweep compete under one rule.
"""

from __future__ import annotations

import os

# We keep one checkpoint per trial; Ray warns on every snapshot that forces, which floods the
# console for short epochs. The snapshots themselves stay on.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import dataclasses
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweeps.workers.federated_actors import trial_resources
from sweeps.results.frontier import Point
from sweeps.privacy.ledger import LedgerEntry, PrivacyLedger
from sweeps.planning.packing import pack_limit, pack_spec, pack_trials
from sweeps.planning import PlannedTrial
from sweeps.driver.progress import SweepProgress
from sweeps.planning.pruning import BandedSuccessiveHalving, epsilon_band
from sweeps.driver.search import BudgetedOptunaSearch
from sweeps.space import SearchSpace
from sweeps.tracking import SweepTracker
from sweeps.workers.trainable import run_trial
from sweeps.protocol import TRIAL_FIELD, EpochRow, LatestRows, TrialSpec, encode_unit, outcome_of, rows_of, unit_of

__all__ = ["SweepStats", "run_trials", "connect_ray"]


@dataclasses.dataclass
class SweepStats:
    """Where a sweep's time went, summed over trials as results arrive in the driver."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    train_seconds: float = 0.0  # inside training epochs (worker)
    eval_seconds: float = 0.0  # evaluating on the test set (worker)
    setup_seconds: float = 0.0  # trial start to first epoch: imports, data, model, σ (worker)
    report_seconds: float = 0.0  # between epochs: checkpoints, ε lookup, reporting (worker)
    logging_seconds: float = 0.0  # MLflow writes (driver, a background thread)
    trials_finished: int = 0
    epochs: int = 0

    ended: float | None = None  # when the trials were over and their logging done (run_trials' end)

    def wall_seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def split(self, *, slots: float) -> dict[str, float]:
        """Shares of the slots' time (wall time x concurrent trial slots) and the raw seconds."""
        wall = self.wall_seconds()
        slot_seconds = max(wall * slots, 1e-9)
        busy = self.train_seconds + self.eval_seconds + self.setup_seconds + self.report_seconds
        return {
            "wall_seconds": wall, "slots": slots, "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds, "setup_seconds": self.setup_seconds,
            "report_seconds": self.report_seconds, "logging_seconds": self.logging_seconds,
            "train_share": self.train_seconds / slot_seconds, "eval_share": self.eval_seconds / slot_seconds,
            "setup_share": self.setup_seconds / slot_seconds, "report_share": self.report_seconds / slot_seconds,
            "idle_share": max(0.0, 1 - busy / slot_seconds),
            "trial_epochs_per_second": self.epochs / max(wall, 1e-9),
        }


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

    def __init__(self, tracker: SweepTracker, stats: SweepStats, *, total: int | None,
                 time_budget_s: float | None = None, out: TextIO = sys.stdout,
                 ledger: PrivacyLedger | None = None, public_seed: bool = False,
                 progress: SweepProgress | None = None):
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
        self._unlogged: dict[str, list[tuple[int, dict[str, float]]]] = {}  # epochs not yet sent to MLflow
        self._unlogged_since: dict[str, float] = {}  # member key -> when its oldest unlogged epoch came
        self._shown: set[str] = set()  # member keys with an epoch sent to MLflow already
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
        return [dataclasses.replace(point, run_id=self.tracker.run_id_of(key))
                for point, key in zip(self.points, self._point_keys)]

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
            self.ledger.record(LedgerEntry.from_spec(spec, public_seed=self.public_seed) for spec in members
                               if spec.kind != "federated")
        if len(members) == 1 and members[0].key not in self._finished:
            # A lone trial may run for hours: its run shows in MLflow from the start. The members
            # of a pack (seconds of training) show with their first epochs. A trial that had ended
            # before a resume (Tune's saved state can predate its end) keeps the run it has.
            self._write(self.tracker.log_trial, key=members[0].key, name=members[0].name, params=members[0].params)

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
                if row.diverged is not None:
                    self._last_rows.update(key, row)
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
                self._write(self.tracker.log_trial, key=key, name=spec.name, params=spec.params, epochs=epochs)

    def _log_epoch(self, spec: TrialSpec, row: EpochRow) -> None:
        self.stats.epochs += 1
        metrics = {"val_accuracy": row.val_accuracy, "epoch_seconds": row.epoch_seconds}
        if row.val_loss is not None:
            metrics["val_loss"] = row.val_loss
        # MLflow stores no infinity: a trial without noise logs no ε (its run's params say so).
        metrics.update({f"epsilon_client_{i}": e for i, e in enumerate(row.client_epsilons) if math.isfinite(e)})
        if math.isfinite(row.epsilon):
            metrics["epsilon"] = row.epsilon
        self.points.append(Point(epsilon=row.epsilon, accuracy=row.val_accuracy, run_id="", trial=spec.name,
                                 epoch=row.epoch, delta=spec.delta, accountant=spec.accountant,
                                 params={k: str(v) for k, v in spec.params.items()}))  # as log_trial logs them
        self._point_keys.append(spec.key)
        self.progress.point(self.points[-1])
        self._unlogged.setdefault(spec.key, []).append((row.epoch, metrics))
        self._unlogged_since.setdefault(spec.key, time.monotonic())

    def _finish(self, trial: Any, *, error: bool) -> None:
        members = self._members(trial)
        for spec in members:
            if spec.key in self._finished:
                self._finished.discard(spec.key)
                continue
            row = self._last_rows.pop(spec.key)
            # A pack that errored out may still have finished some members before it did.
            self._finish_member(spec, row, error=error and not (row is not None and row.ended),
                                error_file=trial.error_file)
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
        self._write(self.tracker.log_trial, key=spec.key, name=spec.name, params=spec.params,
                    epochs=self._unlogged.pop(spec.key, []), outcome=outcome, tags=tags)
        self._unlogged_since.pop(spec.key, None)
        self._specs.pop(spec.key, None)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.stats.trials_finished += 1
        name = spec.name
        if row is not None and row.diverged is None:
            privacy = (f"ε = {row.epsilon:.3f} (δ = {spec.delta:g}, {spec.accountant.upper()})"
                       if math.isfinite(row.epsilon) else "ε = ∞ (no noise)")
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


class PlanAheadPump(tune.Callback):
    """Keeps the searcher's planner actor asking Optuna for the next batches, after each step of
    Tune's control loop, so that a slot that frees up finds its next pack planned."""

    def __init__(self, searcher: BudgetedOptunaSearch) -> None:
        self.searcher = searcher

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.searcher.plan_ahead()


class BandedASHA(FIFOScheduler):
    """Ray Tune adapter for :class:`sweeps.planning.pruning.BandedSuccessiveHalving`, kept on a pruning board.

    The rule's state lives in one Ray actor (the board, named ``board_name``) so that lone
    trials (judged here, in the driver) and the members of packs (judged by their workers, which
    ask the board directly) compete in the same bands and rungs.
    """

    def __init__(self, board_name: str) -> None:
        super().__init__()
        self.board_name = board_name
        self._board: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_board": None}  # Tune saves its scheduler; an actor handle is per session

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # always val_accuracy, maximised

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if "members" in result or "val_accuracy" not in result or result.get("diverged"):
            return TrialScheduler.CONTINUE  # a pack's workers ask the board for their members themselves
        if self._board is None:
            self._board = ray.get_actor(self.board_name)
        spec = unit_of(trial.config).members[0]
        judged = (spec.key, epsilon_band(spec.planned_epsilon), int(result["epoch"]), float(result["val_accuracy"]))
        stop = bool(ray.get(self._board.judge.remote([judged])))
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE


def start_pruning_board(name: str, *, grace_period: int, max_epochs: int) -> Any:
    """The sweep's pruning board: a :class:`BandedSuccessiveHalving` in a Ray actor named ``name``.

    It takes no CPU (one dict lookup per call). A resumed sweep starts a fresh board: trials
    that ran before the interruption are not compared again.
    """
    board = ray.remote(num_cpus=0)(BandedSuccessiveHalving)
    return board.options(name=name, get_if_exists=True).remote(grace_period=grace_period, max_epochs=max_epochs)


def connect_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    """Local Ray with this machine's resources (or ``num_cpus`` CPUs), or an existing cluster at ``address``."""
    if ray.is_initialized():
        return
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             configure_logging=True)


class _InterruptCatcher:
    """Ctrl-C (SIGINT) ends the sweep the way Ray Tune's own handler does, and says it did.

    Tune catches SIGINT, saves its state and returns from ``fit`` as if the sweep had ended; with
    Ray 2.6x its result grid then counts the trials it stopped as terminated, so the launcher
    could not tell an interrupted sweep from a finished one and wrote a frontier, closed the
    parent run and marked the stopped trials failed. Here SIGINT sets ``callback.interrupted``
    and passes the stop on through SIGUSR1, which Tune always handles the same way.
    """

    def __init__(self, callback: TrackingCallback) -> None:
        self.callback = callback
        self.previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
            return
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self.previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.callback.interrupted = True
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # Tune has not started its loop: nothing to save yet
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: stop, save the state, return

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            self.previous = None


def _catch_interrupt(callback: TrackingCallback) -> _InterruptCatcher:
    catcher = _InterruptCatcher(callback)
    catcher.install()
    return catcher


def _trial_dirname(trial: Any) -> str:
    return f"{unit_of(trial.config).name}_{trial.trial_id}"


def run_trials(
    space: SearchSpace,
    *,
    tracker: SweepTracker,
    storage_path: Path,
    name: str,
    grid: Sequence[PlannedTrial] | None,
    searcher: BudgetedOptunaSearch | None,
    resume: bool,
    slots: int = 1,
    max_failures: int = 2,
    time_budget_s: float | None = None,
    ledger: PrivacyLedger | None = None,
    progress: SweepProgress | None = None,
) -> tuple[TrackingCallback, Any]:
    """Run the trials on Ray Tune; returns the callback (time split, points seen) and Ray's ResultGrid.

    ``slots`` (trials the cluster runs at once) decides how a grid is cut into packs. ``progress``
    shows the trials as they end (default: one line per trial).
    """
    stats = SweepStats()
    total = len(grid) if grid is not None else space.trials
    # The searcher records an Optuna trial when it hands it out, before Tune has it; the callback
    # records grid trials as they start. Both recording the same trials appended every Optuna
    # trial twice to the ledger of a resumed sweep (the restored searcher holds its own copy).
    callback = TrackingCallback(tracker, stats, total=total, time_budget_s=time_budget_s,
                                ledger=ledger if searcher is None else None, public_seed=space.public_seed,
                                progress=progress)
    # Federated trials reserve one bundle per client actor; other trials, {"cpu": ..., "gpu": ...}.
    trainable = tune.with_resources(run_trial, trial_resources(space))
    experiment = storage_path / name
    board, board_name = None, None
    if space.pruner == "asha":
        max_epochs = max(int(t.train_config["epochs"]) for t in grid) if grid else int(space.fixed.get("epochs", 15))
        board_name = f"dpsweep-pruning-{name}"
        board = start_pruning_board(board_name, grace_period=max(1, max_epochs // 4), max_epochs=max_epochs)
    if searcher is not None:
        searcher.board_name, searcher.slots = board_name, slots
    interrupted = _catch_interrupt(callback)
    callback.progress.start()
    try:
        if resume and tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
            tuner._local_tuner._run_config.callbacks = [callback]  # the restored callback lost its tracker state
            return callback, tuner.fit()
        return callback, _new_tuner(space, trainable, name=name, storage_path=storage_path, grid=grid,
                                    searcher=searcher, board_name=board_name, slots=slots, callback=callback,
                                    max_failures=max_failures, time_budget_s=time_budget_s).fit()
    finally:
        interrupted.restore()
        callback.progress.close()
        callback.close()
        # The slots are the sweep's until its trials are over and logged; the frontier and
        # reports that follow do not use them.
        stats.ended = time.monotonic()
        if searcher is not None:
            searcher.close()
        if board is not None:
            ray.kill(board)


def _new_tuner(
    space: SearchSpace, trainable: Any, *, name: str, storage_path: Path, grid: Sequence[PlannedTrial] | None,
    searcher: BudgetedOptunaSearch | None, board_name: str | None, slots: int, callback: TrackingCallback,
    max_failures: int, time_budget_s: float | None,
) -> tune.Tuner:
    scheduler = BandedASHA(board_name) if board_name is not None else None
    param_space: dict[str, Any] = {}
    if grid is not None:
        packs = pack_trials(grid, vectorize=space.vectorize, slots=slots)
        param_space = {TRIAL_FIELD: tune.grid_search([
            encode_unit(pack_spec(pack, width=pack_limit(pack[0], vectorize=space.vectorize))) for pack in packs])}
    if board_name is not None:
        param_space["board"] = board_name
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=1 if grid is not None else space.trials,
            # Without it Tune keeps one trial pending for a custom searcher, and a second slot
            # waited for a suggestion until the first trial ended: half the machine idle. One
            # more than the slots keeps a suggestion waiting, so a slot that frees up starts its
            # next pack at once instead of waiting for Optuna and the planner.
            max_concurrent_trials=slots + 1 if searcher is not None else None,
            time_budget_s=time_budget_s,
            reuse_actors=True, trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage_path), verbose=0,
            callbacks=[callback] if searcher is None else [callback, PlanAheadPump(searcher)],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
