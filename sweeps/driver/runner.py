"""Running a sweep's trials on Ray Tune: the only module of dpsweep that drives Ray.

Trials run as Ray Tune function trainables (local Ray by default, a cluster with ``address``);
trials of a small model run several at once as packs (:mod:`sweeps.planning.packing`). A Tune callback in
the driver (:mod:`sweeps.driver.tracking_callback`) forwards every epoch of every trial, packed or not,
to the MLflow tracker, so logging happens off the training path, and prints one progress line per
finished trial. Pruning decisions come from one pruning board (a Ray actor), asked by the driver
for lone trials and by the workers for the members of packs, so all trials of a sweep compete
under one rule.
"""

from __future__ import annotations

import os

# We keep one checkpoint per trial; Ray warns on every snapshot that forces, which floods the
# console for short epochs. The snapshots themselves stay on.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from dp_core.errors import ConfigError
from dp_core.own_data import provided
from sweeps.driver.progress import SweepProgress
from sweeps.driver.search import BudgetedOptunaSearch
from sweeps.driver.sweep_stats import SweepStats  # the callback's; a sweep's saved Tune state looks for it here
from sweeps.driver.tracking_callback import TrackingCallback  # also where Tune's saved states from before its move look
from sweeps.planning import PlannedTrial
from sweeps.planning.packing import pack_limit, pack_spec, pack_trials
from sweeps.planning.pruning import epsilon_band
from sweeps.privacy.ledger import PrivacyLedger
from sweeps.protocol import TRIAL_FIELD, encode_unit, unit_of
from sweeps.space import PRUNERS, SearchSpace
from sweeps.tracking import SweepTracker
from sweeps.workers.federated_actors import trial_resources
from sweeps.workers.trainable import run_trial
from sweeps.workers.trial import CHECKPOINT_EVERY_FIELD, KEEP_BEST_MODEL_FIELD

__all__ = ["SweepStats", "run_trials", "connect_ray", "copy_from_checkpoint"]


class PlanAheadPump(tune.Callback):
    """Keeps the searcher's planner actor asking Optuna for the next batches, after each step of
    Tune's control loop, so that a slot that frees up finds its next pack planned."""

    def __init__(self, searcher: BudgetedOptunaSearch) -> None:
        self.searcher = searcher

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.searcher.plan_ahead()


class BandedASHA(FIFOScheduler):
    """Ray Tune adapter for a pruning rule (:mod:`sweeps.planning.pruning`), kept on a pruning board.

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


def start_pruning_board(name: str, rule: type, *, grace_period: int, max_epochs: int) -> Any:
    """The sweep's pruning board: its pruning ``rule`` in a Ray actor named ``name``.

    ``rule`` is an entry of :data:`sweeps.space.model.PRUNERS`.

    It takes no CPU (one dict lookup per call). A resumed sweep starts a fresh board: trials
    that ran before the interruption are not compared again.
    """
    board = ray.remote(num_cpus=0)(rule)
    return board.options(name=name, get_if_exists=True).remote(grace_period=grace_period, max_epochs=max_epochs)


def connect_ray(address: str | None, *, num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None) -> None:
    """Local Ray with this machine's resources (or ``num_cpus`` CPUs), or an existing cluster at ``address``.

    ``runtime_env`` (sweeps.driver.user_code) carries the space's own code to every worker of the sweep.
    """
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            configure_logging=True,
            runtime_env=runtime_env,
        )
    except ValueError as error:
        if runtime_env is None or "exceeds the maximum size" not in str(error):
            raise
        raise ConfigError(
            f"Expected the space's code to fit in one of Ray's packages, but Ray refused it: {error}"
        ) from None


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
    callback = TrackingCallback(
        tracker,
        stats,
        total=total,
        time_budget_s=time_budget_s,
        ledger=ledger if searcher is None else None,
        public_seed=space.public_seed,
        progress=progress,
    )
    # Federated trials reserve one bundle per client actor; other trials, {"cpu": ..., "gpu": ...}.
    # A sweep's own datasets, read by the driver, reach each node once through Ray's object store.
    own_data = provided()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, own_data=own_data) if own_data else run_trial, trial_resources(space)
    )
    experiment = storage_path / name
    board, board_name = None, None
    default_epochs = int(space.fixed.get("epochs", 15))  # a federated trial counts rounds: none prunes it
    max_epochs = max(int(t.train_config.get("epochs", default_epochs)) for t in grid) if grid else default_epochs
    rule, rule_settings = PRUNERS.get(space.pruner), {"grace_period": max(1, max_epochs // 4), "max_epochs": max_epochs}
    if rule(**rule_settings).rung_epochs():  # a rule that never stops a trial needs no board
        board_name = f"dpsweep-pruning-{name}"
        board = start_pruning_board(board_name, rule, **rule_settings)
    if searcher is not None:
        searcher.board_name, searcher.slots = board_name, slots
    interrupted = _catch_interrupt(callback)
    callback.progress.start()
    try:
        if resume and tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
            tuner._local_tuner._run_config.callbacks = [callback]  # the restored callback lost its tracker state
            return callback, tuner.fit()
        return callback, _new_tuner(
            space,
            trainable,
            name=name,
            storage_path=storage_path,
            grid=grid,
            searcher=searcher,
            board_name=board_name,
            slots=slots,
            callback=callback,
            max_failures=max_failures,
            time_budget_s=time_budget_s,
        ).fit()
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


def copy_from_checkpoint(results: Any, *, trial: str, filename: str, to: Path) -> bool:
    """Copy ``filename`` from the latest checkpoint of the lone trial named ``trial`` in ``results``
    (Ray's ResultGrid) to ``to``; whether it was there. The checkpoint is read from the sweep's Ray
    storage (on a cluster, the storage shared by its nodes), not from the worker that wrote it."""
    for result in results:
        if result.config is None or unit_of(result.config).name != trial or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as folder:
            source = Path(folder) / filename
            if not source.exists():
                return False
            to.parent.mkdir(parents=True, exist_ok=True)
            partial = to.with_name(to.name + ".partial")
            shutil.copyfile(source, partial)
            partial.replace(to)  # whole or not at all
            return True
    return False


def _new_tuner(
    space: SearchSpace,
    trainable: Any,
    *,
    name: str,
    storage_path: Path,
    grid: Sequence[PlannedTrial] | None,
    searcher: BudgetedOptunaSearch | None,
    board_name: str | None,
    slots: int,
    callback: TrackingCallback,
    max_failures: int,
    time_budget_s: float | None,
) -> tune.Tuner:
    scheduler = BandedASHA(board_name) if board_name is not None else None
    param_space: dict[str, Any] = {}
    # A private selection releases one trial's model at its best epoch: each trial runs alone and
    # keeps that model in its checkpoints (a pack keeps none), for the driver to register.
    selecting = space.private_selection is not None
    vectorize = 1 if selecting else space.vectorize
    if grid is not None:
        packs = pack_trials(grid, vectorize=vectorize, slots=slots)
        param_space = {
            TRIAL_FIELD: tune.grid_search(
                [encode_unit(pack_spec(pack, width=pack_limit(pack[0], vectorize=vectorize))) for pack in packs]
            )
        }
    if selecting:
        param_space[KEEP_BEST_MODEL_FIELD] = True
    param_space[CHECKPOINT_EVERY_FIELD] = 60.0 * space.checkpoint_every_minutes
    if board_name is not None:
        param_space["board"] = board_name
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=1 if grid is not None else space.trials,
            # Without it Tune keeps one trial pending for a custom searcher, and a second slot
            # waited for a suggestion until the first trial ended: half the machine idle. One
            # more than the slots keeps a suggestion waiting, so a slot that frees up starts its
            # next pack at once instead of waiting for Optuna and the planner.
            max_concurrent_trials=slots + 1 if searcher is not None else None,
            time_budget_s=time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage_path),
            verbose=0,
            callbacks=[callback] if searcher is None else [callback, PlanAheadPump(searcher)],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
