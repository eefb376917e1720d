"""Optuna search under an ε budget, as a Ray Tune Searcher.

Why not Ray's ``OptunaSearch``: trials that ASHA stops reach it as *completed* with their last
(early, low) accuracy, which misleads the sampler, and it cannot refuse a configuration whose
planned ε is over budget without starting it. This searcher asks Optuna for a configuration,
plans its privacy spend (pure, instant), and:

- over budget: tells Optuna the trial was pruned and records it as skipped, using no compute;
- within budget: hands it to Ray Tune; accuracy at the pruning rungs and the last epoch goes to
  Optuna as intermediate values (single objective); a trial stopped before its planned epochs
  is told as PRUNED, others as COMPLETE with accuracy (single objective) or (accuracy, ε)
  (multi-objective), each as soon as its last epoch arrives.

With ``vectorize`` (see :mod:`sweeps.planning.packing`), one suggestion is a pack: admitted
configurations asked of Optuna in a batch (Optuna's ask-and-tell takes several open trials)
that share model, data and steps, trained together by one Ray trial and told to Optuna one by
one. A configuration that cannot join the pack being built waits for the next suggestion.

Asking (TPE) and planning run in two Ray actors on the driver's machine, batches ahead of Tune's
requests; the driver's part is to hand out what they planned and to tell Optuna the results.

The study lives in an Optuna journal file in the sweep folder (``--resume`` continues it);
Optuna's sqlite storage cost a database transaction per ask, suggestion and epoch report, a large
share of the driver's time in a sweep of short trials.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from ray.tune.search import Searcher
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dp_core.config import ModelConfig
from sweeps.driver.optuna_actors import (
    Asked,
    Asker,
    Planner,
    ask_batch,
    journal_storage,
    new_sampler,
    plan_asked,
    sampler_seed,
)
from sweeps.planning import EpsilonBudget, PlannedTrial
from sweeps.planning.packing import group_key, pack_capacity, pack_limit, pack_size, pack_spec
from sweeps.privacy.adaptive import RdpFilter
from sweeps.privacy.ledger import LedgerEntry, PrivacyLedger
from sweeps.privacy.mechanism import TrialMechanism
from sweeps.protocol import TRIAL_FIELD, EpochRow, LatestRows, encode_unit, outcome_of, rows_of
from sweeps.space import SearchSpace
from sweeps.workers.trial import CHECKPOINT_EVERY_FIELD

__all__ = ["BudgetedOptunaSearch", "journal_storage"]

#: ``_next_admitted``'s answer while the next configuration is still being planned.
_NOT_YET = object()


class BudgetedOptunaSearch(Searcher):
    def __init__(
        self,
        space: SearchSpace,
        *,
        storage: str | Path,
        study_name: str,
        plan: Callable[[dict[str, Any], str], PlannedTrial],
        on_skip: Callable[[PlannedTrial | None, dict[str, Any], str], None],
        ledger: PrivacyLedger | None = None,
        sweep_filter: RdpFilter | None = None,
        max_consecutive_skips: int = 200,
    ) -> None:
        multi = space.objective == "multi"
        super().__init__(
            metric=["val_accuracy", "epsilon"] if multi else "val_accuracy", mode=["max", "min"] if multi else "max"
        )
        self.space = space
        self.storage = str(storage)  # an Optuna journal file
        self.study_name = study_name
        self.plan = plan
        self.on_skip = on_skip
        self.budget = EpsilonBudget(space.epsilon_budget)
        self.max_consecutive_skips = max_consecutive_skips
        self.ledger = ledger  # every configuration handed out is recorded here before it runs
        self.sweep_filter = sweep_filter  # the sweep's RDP filter (sweeps.privacy.adaptive), if the space sets one
        self._filter_spent: float | None = None  # RDP at the filter's order of the admitted trials
        self._cheapest = math.inf  # the smallest such cost of any configuration proposed
        self.planning_seconds = 0.0  # driver time spent planning suggestions (σ, per-epoch ε)
        self.board_name: str | None = None  # the sweep's pruning board, passed on to packs
        self.slots = 1  # trials the cluster runs at once: the last packs are cut to keep them all busy
        self._live: dict[str, dict[str, int]] = {}  # Ray trial id -> {member trial key: Optuna trial number}
        self._asked: dict[str, int] = {}  # member key -> its open Optuna trial's id, for intermediate values
        self._last_rows = LatestRows()  # member key -> its latest epoch row
        self._reported: set[tuple[str, int]] = set()  # (member key, epoch) told to Optuna
        self._finished: set[int] | None = None  # numbers of the study's finished trials (see _is_finished)
        self._rungs: frozenset[int] | None = None  # the pruning board's rung epochs
        self._waiting: list[Asked] = []  # admitted, not yet in a pack
        self._issued = 0  # configurations handed to Ray (space.trials caps them, not the packs)
        self._ready: list[Asked] = []  # planned, not yet judged against the budget
        self._planning: list[tuple[int, Any]] = []  # (count, ref) of batches the planner works on, oldest first
        self._asker: Any = None  # the Asker and Planner actors, started with the first suggestion
        self._planner: Any = None
        self._study: optuna.Study | None = None

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            multi = self.space.objective == "multi"
            self._study = optuna.create_study(
                storage=journal_storage(self.storage),
                study_name=self.study_name,
                sampler=new_sampler(self.space, seed=sampler_seed(self.space, 0)),
                load_if_exists=True,
                directions=["maximize", "minimize"] if multi else ["maximize"],
            )
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric and mode come from the space, not from TuneConfig

    def _batch_size(self) -> int:
        """How many configurations to ask and plan at once: a pack's worth for packs, the slots for
        one-trial units; within the room to ask ahead (:meth:`_ask_room`) and the trial cap."""
        width = self._unit_width()
        size = min(pack_capacity(width) if width > 1 else max(self.slots, 1), self._ask_room())
        if self.space.trials is None:
            return size
        return min(
            size,
            self.space.trials
            - self._issued
            - len(self._waiting)
            - len(self._ready)
            - sum(count for count, _ in self._planning),
        )

    #: Batches being asked and planned ahead of Tune's requests: enough that the control loop
    #: finds a planned pack ready, few enough that Optuna's later suggestions still learn from
    #: the results coming in.
    PLAN_AHEAD = 2

    def plan_ahead(self) -> None:
        """Keep ``PLAN_AHEAD`` batches being asked and planned by the asker and planner actors
        (without waiting for them). Tune's control loop calls this after each of its steps
        (``sweeps.driver.runner.PlanAheadPump``)."""
        if self._planner is None:
            return  # started by the first suggestion (_collect)
        while len(self._planning) < self.PLAN_AHEAD:
            count = self._batch_size()
            if count <= 0:
                return  # the trial cap is reached
            # Ray hands the asker's answer to the planner directly, without a trip through here.
            self._planning.append((count, self._planner.plan_batch.remote(self._asker.ask.remote(count))))

    def _collect(self) -> None:
        """Take the oldest batch being planned, waiting for it if need be, and plan more."""
        if self._planner is None:
            # The actors start first (seconds of imports), and meanwhile the first batch is asked
            # and planned here: one round of a pack for each slot, so that every slot starts at
            # once. The actors ask only after it (plan_ahead), so trial numbers stay in order.
            study = self.study  # created in its journal file before the actors load it from there
            node = ray.get_runtime_context().get_node_id()  # the machine with the journal file
            on_this_machine = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
            self._asker = (
                ray.remote(num_cpus=0)(Asker)
                .options(scheduling_strategy=on_this_machine)
                .remote(self.space, self.storage, self.study_name, sampler_seed(self.space, 1))
            )  # not the driver's stream again
            self._planner = (
                ray.remote(num_cpus=0)(Planner)
                .options(scheduling_strategy=on_this_machine)
                .remote(self.space, self.storage, self.study_name, self.plan)
            )
            count = min(self._batch_size(), self._unit_width() * max(self.slots, 1))
            self._take(plan_asked(study, self.space, self.plan, ask_batch(study, self.space, count)))
            self.plan_ahead()
            return
        self.plan_ahead()  # skipped suggestions may have left room under the trial cap
        if self._planning:
            self._take(ray.get(self._planning.pop(0)[1]))
            self.plan_ahead()

    def _collect_done(self) -> None:
        """Take the batches the planner has finished, oldest first, without waiting."""
        while self._planning and ray.wait([self._planning[0][1]], timeout=0)[0]:
            self._take(ray.get(self._planning.pop(0)[1]))
        self.plan_ahead()

    def _take(self, batch: list[Asked]) -> None:
        self.planning_seconds += sum(asked.plan_seconds for asked in batch)
        self._ready += batch

    def _unit_width(self) -> int:
        """The most configurations one unit of work may train at once in this space (1: one trial
        per unit), as far as the space says before any trial is planned: ``vectorize: auto`` packs
        only the models in ``sweeps.planning.packing.AUTO_MODELS``; a federated trial runs alone."""
        if self.space.kind == "federated":
            return 1
        models = self.space.axes.get("model", (self.space.fixed.get("model", ModelConfig().model),))
        return max(pack_size(self.space.vectorize, str(model)) for model in models)

    def _ask_room(self) -> int | float:
        """How many more configurations may be asked of Optuna now. For packs, no limit but
        ``PLAN_AHEAD`` batches: a pack's worth planned ahead keeps a slot from waiting for Optuna.
        For one-trial units, the slots plus the one trial Tune keeps waiting (``runner``'s
        ``max_concurrent_trials``), less the configurations open now (asked, and not yet told):
        a CNN sweep that asked 48 configurations two batches ahead was blind for its first ~100
        trials, and one asked after a result is told is TPE's better guess for a trial of seconds."""
        if self._unit_width() > 1:
            return math.inf
        handed_out = sum(len(members) for members in self._live.values())  # told members leave it
        asked = len(self._waiting) + len(self._ready) + sum(count for count, _ in self._planning)
        return max(self.slots, 1) + 1 - handed_out - asked

    def _next_admitted(self, *, block: bool) -> Asked | None | object:
        """The next planned configuration within the budget; None after too many skips or at the
        trial cap; ``_NOT_YET`` if ``block`` is false and the next one is still being planned, or
        if nothing more may be asked before a result is told (:meth:`_ask_room`)."""
        for _ in range(self.max_consecutive_skips):
            if not self._ready and self._planner is not None:
                self._collect_done()
                if not self._ready and not block and self._planning:
                    return _NOT_YET
            if not self._ready:
                self._collect()
            if not self._ready:
                # No room to ask before a result is told (one-trial units), or the trial cap is reached.
                return _NOT_YET if self._ask_room() <= 0 else None
            asked = self._ready.pop(0)
            if asked.planned is None:
                self._mark_finished(asked.number)
                self.study.tell(asked.number, state=optuna.trial.TrialState.FAIL)
                self.on_skip(None, {"name": asked.name, **asked.values}, str(asked.error))
                continue
            reason = self.budget.rejects(asked.planned) or self._filter_rejects(asked.planned)
            if reason is not None:
                self._mark_finished(asked.number)
                self.study.tell(asked.number, state=optuna.trial.TrialState.PRUNED)
                self.on_skip(asked.planned, asked.values, reason)
                if self._filter_full():
                    return None  # no trial asked so far would fit: the search is over
                continue
            return asked
        return None

    def _filter_rejects(self, planned: PlannedTrial) -> str | None:
        """The sweep filter's reason to refuse ``planned``, or None (then it is charged at once:
        every admitted configuration is handed out, and one left waiting only over-charges)."""
        if self.sweep_filter is None:
            return None
        if self._filter_spent is None:
            # Charged from the ledger: what a resumed sweep handed out before counts too.
            entries = self.ledger.entries() if self.ledger is not None else []
            self._filter_spent = sum(self.sweep_filter.cost(entry.mechanism()) for entry in entries)
        mechanism = TrialMechanism.from_plan(planned.plan)
        cost = self.sweep_filter.cost(mechanism)
        self._cheapest = min(self._cheapest, cost)
        reason = self.sweep_filter.rejects(self._filter_spent, mechanism)
        if reason is None:
            self._filter_spent += cost
        return reason

    def _filter_full(self) -> bool:
        """Whether the filter's room left is below the cheapest trial Optuna has proposed."""
        return (
            self.sweep_filter is not None
            and self._filter_spent is not None
            and self.sweep_filter.capacity - self._filter_spent < self._cheapest
        )

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next pack (or lone trial) of planned configurations within the budget.

        For the one trial Tune keeps waiting beyond its slots, it never waits on the planner
        actors: with nothing planned yet it answers None (Tune asks again after its next step),
        and a pack takes the configurations planned so far rather than wait for a full one.
        Waiting then would hold Tune's loop, and the packs reporting to it, for nothing.

        For a free slot it waits. Tune stops an idle actor it has no trial for; a trial that
        comes later gets a fresh actor, and when a busy actor frees up while the fresh one is
        still starting, Tune gives the trial to the busy one and stops the fresh one. In a
        benchmark the planner, late in the sweep, delivered at just that rhythm: fresh actors
        were stopped one after another as they started, and one of the two slots stayed idle to
        the end (``docs/benchmarks.md``). A free slot's trial now comes at once, before its actor
        can be stopped.
        """
        remaining = self.space.trials - self._issued if self.space.trials is not None else math.inf
        if remaining <= 0:
            return Searcher.FINISHED
        # Fewer trials of ours in Tune's hands than slots: a slot is free (or Tune itself waits
        # for this answer, re-asking every second without stepping its loop).
        slot_free = len(self._live) < max(self.slots, 1)
        first = self._waiting.pop(0) if self._waiting else self._next_admitted(block=slot_free)
        if first is _NOT_YET:
            return None
        if first is None:
            return Searcher.FINISHED  # the space has (almost) nothing left within budget
        members = [first]
        width = pack_limit(first.planned, vectorize=self.space.vectorize)
        limit = pack_capacity(width)
        if self._issued < width * self.slots:
            limit = min(limit, width)  # every slot's first pack is one round: all slots start at once
        if math.isfinite(remaining):
            limit = min(limit, math.ceil(remaining / max(self.slots, 1)))
        group = group_key(first.planned)
        for _ in range(2 * limit):  # a few misfits may wait for the next pack
            if len(members) >= limit:
                break
            candidate = next((w for w in self._waiting if group_key(w.planned) == group), None)
            if candidate is not None:
                self._waiting.remove(candidate)
            else:
                candidate = self._next_admitted(block=False)
                if candidate is None or candidate is _NOT_YET:
                    break
                if group_key(candidate.planned) != group:
                    self._waiting.append(candidate)
                    continue
            members.append(candidate)
        if self.ledger is not None:
            # Before Tune has the configuration: no worker can train it unrecorded.
            self.ledger.record(
                LedgerEntry.from_spec(asked.planned.spec(), public_seed=self.space.public_seed) for asked in members
            )
        self._issued += len(members)
        self._live[trial_id] = {asked.planned.key: asked.number for asked in members}
        self._asked.update({asked.planned.key: asked.trial_id for asked in members})
        config: dict[str, Any] = {
            TRIAL_FIELD: encode_unit(pack_spec([asked.planned for asked in members], width=width))
        }
        if self.board_name is not None:
            config["board"] = self.board_name
        config[CHECKPOINT_EVERY_FIELD] = 60.0 * self.space.checkpoint_every_minutes  # as the grid's param_space
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        number_of = self._live.get(trial_id, {})
        for key, epochs in rows_of(result, next(iter(number_of), "")).items():
            if key not in number_of:
                continue  # told already (a lone trial's last result comes twice, see on_trial_complete)
            for row in epochs:
                self._take_epoch(key, number_of[key], row)
            last = self._last_rows.get(key)
            if last is not None and last.ended:
                # A pack's member is told when it ends, not when its pack does: TPE learns from
                # it sooner, and the pack's end does not wait on dozens of tells.
                self._asked.pop(key, None)
                self._tell(number_of.pop(key), self._last_rows.pop(key), error=False)

    def _take_epoch(self, key: str, number: int, row: EpochRow) -> None:
        if not self._last_rows.update(key, row):
            return  # reported before (a pack that started over, a restored trial)
        if self.space.objective == "multi":
            return  # Optuna does not take intermediate values for multi-objective studies
        trial_id = self._asked.get(key)
        if (
            trial_id is not None
            and row.diverged is None
            and (key, row.epoch) not in self._reported
            and not self._is_finished(number)
            and self._tells_optuna(row)
        ):
            # The planner actor asked it: an optuna.Trial of the driver's study is made from its id.
            optuna.trial.Trial(self.study, trial_id).report(row.val_accuracy, step=row.epoch)
            self._reported.add((key, row.epoch))

    def _tells_optuna(self, row: EpochRow) -> bool:
        """Whether this epoch's accuracy goes to Optuna: at the pruning rungs (where the board
        judges trials) and at a trial's last epoch, which is what TPE reads of a pruned trial.
        Every epoch was a journal write with an fsync, a fifth of the driver's time in a sweep
        of packs; the whole learning curve is in MLflow."""
        if self._rungs is None:
            board = ray.get_actor(self.board_name) if self.board_name else None
            self._rungs = frozenset(ray.get(board.rung_epochs.remote())) if board is not None else frozenset()
        return row.epoch in self._rungs or row.ended or row.stopped_by_budget

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        numbers = self._live.get(trial_id)
        if numbers is None:
            return
        if result:
            # A trial's last result (one that ends it: its last epoch, or a pruning decision) comes
            # here only, not through on_trial_result.
            self.on_trial_result(trial_id, result)
        del self._live[trial_id]
        for key, number in numbers.items():
            self._asked.pop(key, None)
            row = self._last_rows.pop(key)
            self._tell(number, row, error=error and not (row is not None and row.ended))

    def _is_finished(self, number: int) -> bool:
        """Whether Optuna's trial ``number`` is already finished in the study.

        A resumed sweep replays what it ran before the interruption: a restored pack trains its
        members again, and those that had ended were told then. Optuna refuses to tell (or take
        intermediate values of) a finished trial, so each trial is told once, whatever replays.
        The set is read from the study once, then kept up to date by this searcher, the study's
        only teller.
        """
        if self._finished is None:
            self._finished = {t.number for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()}
        return number in self._finished

    def _tell(self, number: int, row: EpochRow | None, *, error: bool) -> None:
        if self._is_finished(number):
            return  # told before an interruption; its replay changes nothing
        self._mark_finished(number)
        outcome = outcome_of(row, error=error)
        states = optuna.trial.TrialState
        if outcome in ("failed", "failed_oom"):
            self.study.tell(number, state=states.FAIL)
        elif outcome == "pruned":
            self.study.tell(number, state=states.PRUNED)
        else:
            assert row is not None
            self.study.tell(
                number, [row.val_accuracy, row.epsilon] if self.space.objective == "multi" else row.val_accuracy
            )

    def _mark_finished(self, number: int) -> None:
        if self._finished is not None:
            self._finished.add(number)

    def close(self) -> None:
        """Stop the asker and planner actors (the sweep is over, or interrupted) and mark FAIL
        what they asked ahead that no trial will run."""
        if self._planning:
            # Let batches in flight finish asking, so that none is left open in the study.
            ray.wait([ref for _, ref in self._planning], num_returns=len(self._planning), timeout=30)
        for actor in (self._asker, self._planner):
            if actor is not None:
                ray.kill(actor)
        self._asker, self._planner, self._planning = None, None, []
        if self._study is not None:
            self.fail_abandoned()

    # Ray saves searchers with the experiment; the study itself is already in its journal file.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"live": self._live, "issued": self._issued}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        self._live, self._issued = state["live"], state.get("issued", 0)
        if self.ledger is not None:
            # Trials handed out after Tune's last save count against the cap too (the ledger has them).
            self._issued = max(self._issued, sum(e.role == "trial" for e in self.ledger.entries()))
        self._finished = None  # re-read from the study: it may have been told more after this save
        self._filter_spent = None  # re-read from the ledger
        self.fail_abandoned()

    def fail_abandoned(self) -> list[int]:
        """Mark FAIL the study's RUNNING trials that no restored Ray trial will run; return their numbers.

        When the launcher dies, the trials Tune had in hand are restored and resumed (and told
        once). The others that were open in the study are not: configurations asked and planned
        ahead but not yet handed out, and trials handed out after Tune's last save of its state
        (their workers died with the launcher). They can never end on their own, so each is told
        FAIL, with the reason as its ``dpsweep.fail_reason`` user attribute.
        """
        resumed = {number for members in self._live.values() for number in members.values()}
        abandoned = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.number not in resumed
        ]
        for trial in abandoned:
            optuna.trial.Trial(self.study, trial._trial_id).set_user_attr(
                "dpsweep.fail_reason",
                "never finished: the sweep ended or its launcher stopped before a worker "
                "finished it, and no resumed Ray trial runs it (asked ahead of use, or handed out after Tune's "
                "last saved state)",
            )
            self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        self._finished = None
        return [t.number for t in abandoned]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = None
        # Object refs and actor handles are not picklable; work not yet handed out is asked again.
        state["_waiting"], state["_ready"], state["_planning"], state["_planner"] = [], [], [], None
        state["_asker"] = None
        return state
