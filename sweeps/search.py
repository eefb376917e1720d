"""Optuna search under an ε budget, as a Ray Tune Searcher.

Why not Ray's ``OptunaSearch``: trials that ASHA stops reach it as *completed* with their last
(early, low) accuracy, which misleads the sampler, and it cannot refuse a configuration whose
planned ε is over budget without starting it. This searcher asks Optuna for a configuration,
plans its privacy spend (pure, instant), and:

- over budget: tells Optuna the trial was pruned and records it as skipped, using no compute;
- within budget: hands it to Ray Tune; per-epoch accuracy goes to Optuna as intermediate values
  (single objective); a trial stopped before its planned epochs is told as PRUNED, others as
  COMPLETE with accuracy (single objective) or (accuracy, ε) (multi-objective).

The study lives in a sqlite file in the sweep folder, so ``--resume`` continues it.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from typing import Any

import optuna
from ray.tune.search import Searcher

from sweeps.planning import EpsilonBudget, PlannedTrial
from sweeps.space import Range, SearchSpace
from sweeps.trial import encode_spec

__all__ = ["BudgetedOptunaSearch", "trial_outcome"]


def trial_outcome(last_result: dict[str, Any] | None, *, error: bool = False) -> str:
    """completed / stopped_by_budget / pruned / failed, from a trial's last report."""
    if error or (last_result and last_result.get("diverged")):
        return "failed"
    if not last_result or "epoch" not in last_result:
        return "pruned"
    if last_result.get("stopped_by_budget"):
        return "stopped_by_budget"
    if last_result["epoch"] < last_result["epochs_planned"]:
        return "pruned"
    return "completed"


def _suggest(trial: optuna.Trial, key: str, axis: Any) -> Any:
    if isinstance(axis, Range):
        if axis.integer:
            return trial.suggest_int(key, int(axis.low), int(axis.high), log=axis.log)
        return trial.suggest_float(key, axis.low, axis.high, log=axis.log)
    return trial.suggest_categorical(key, list(axis))


class BudgetedOptunaSearch(Searcher):
    def __init__(
        self,
        space: SearchSpace,
        *,
        storage: str,
        study_name: str,
        plan: Callable[[dict[str, Any], str], PlannedTrial],
        on_skip: Callable[[PlannedTrial | None, dict[str, Any], str], None],
        max_consecutive_skips: int = 200,
    ) -> None:
        multi = space.objective == "multi"
        super().__init__(metric=["test_accuracy", "epsilon"] if multi else "test_accuracy",
                         mode=["max", "min"] if multi else "max")
        self.space = space
        self.storage = storage
        self.study_name = study_name
        self.plan = plan
        self.on_skip = on_skip
        self.budget = EpsilonBudget(space.epsilon_budget)
        self.max_consecutive_skips = max_consecutive_skips
        self.planning_seconds = 0.0  # driver time spent planning suggestions (σ, per-epoch ε)
        self._live: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._asked: dict[str, optuna.Trial] = {}  # not persisted: only for intermediate values
        self._study: optuna.Study | None = None

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            multi = self.space.objective == "multi"
            sampler = (optuna.samplers.NSGAIISampler(seed=self.space.seed) if multi
                       else optuna.samplers.TPESampler(seed=self.space.seed))
            self._study = optuna.create_study(
                storage=self.storage, study_name=self.study_name, sampler=sampler, load_if_exists=True,
                directions=["maximize", "minimize"] if multi else ["maximize"],
            )
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric and mode come from the space, not from TuneConfig

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(self.max_consecutive_skips):
            ot_trial = self.study.ask()
            values = {key: _suggest(ot_trial, key, axis) for key, axis in self.space.axes.items()}
            name = f"trial_{ot_trial.number:04d}"
            config_values = self.space.trial_config(values)
            started = time.monotonic()
            try:
                planned = self.plan(config_values, name)
            except ValueError as error:  # ConfigError: e.g. a target ε no σ reaches
                self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                self.on_skip(None, {"name": name, **values}, str(error))
                continue
            finally:
                self.planning_seconds += time.monotonic() - started
            reason = self.budget.rejects(planned)
            ot_trial.set_user_attr("planned_epsilon", planned.planned_epsilon)
            if reason is not None:
                self.study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
                self.on_skip(planned, values, reason)
                continue
            self._live[trial_id] = ot_trial.number
            self._asked[trial_id] = ot_trial
            return {"trial": encode_spec(planned.spec())}
        return Searcher.FINISHED  # the space has (almost) nothing left within budget

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.space.objective == "multi":
            return  # Optuna does not take intermediate values for multi-objective studies
        trial = self._asked.get(trial_id)
        if trial is not None and "test_accuracy" in result:
            trial.report(result["test_accuracy"], step=int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        number = self._live.pop(trial_id, None)
        self._asked.pop(trial_id, None)
        if number is None:
            return
        outcome = trial_outcome(result, error=error)
        states = optuna.trial.TrialState
        if outcome == "failed":
            self.study.tell(number, state=states.FAIL)
        elif outcome == "pruned":
            self.study.tell(number, state=states.PRUNED)
        else:
            assert result is not None
            accuracy = float(result["test_accuracy"])
            epsilon = float(result["epsilon"]) if result["epsilon"] >= 0 else math.inf
            self.study.tell(number, [accuracy, epsilon] if self.space.objective == "multi" else accuracy)

    # Ray saves searchers with the experiment; the study itself is already in its sqlite file.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"live": self._live}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self._live = pickle.load(handle)["live"]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = None
        state["_asked"] = {}
        return state
