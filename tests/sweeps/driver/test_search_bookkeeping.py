"""The Optuna searcher's bookkeeping, driven as Tune drives it, on real Ray and a real Optuna journal.

What it keeps: configurations issued against the trial cap, the live Ray trials and their
members, which Optuna trials are finished (each is told once), skips, what it marks FAIL, and how
many configurations it asks of Optuna ahead of the results. Tune itself is not started: the
tests call ``suggest``, ``on_trial_result`` and ``on_trial_complete`` as its control loop does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import ray

from sweeps.driver.search import BudgetedOptunaSearch, journal_storage
from sweeps.planning import plan_trial
from sweeps.protocol import unit_of
from sweeps.space import load_space

States = optuna.trial.TrialState

SPACE = """
name: kept
description: searcher bookkeeping test
fixed:
  dataset: digits
  model: {model}
  batch_size: 128
  epochs: 4
  noise_multiplier: 1.0
  delta: 1.0e-5
  accountant: rdp
axes:
  lr: {{low: 0.1, high: 3.0, log: true}}
epsilon_budget: {budget}
search: optuna
trials: {trials}
pruner: none
vectorize: {vectorize}
resources: {{cpus: 1, gpus: 0}}
seed: 0
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _searcher(
    tmp_path: Path,
    *,
    model: str = "mlp",
    trials: int = 6,
    vectorize: Any = 1,
    budget: float = 50.0,
    slots: int = 1,
    **extra: Any,
) -> BudgetedOptunaSearch:
    path = tmp_path / "kept.yaml"
    path.write_text(SPACE.format(model=model, trials=trials, vectorize=vectorize, budget=budget))
    space = load_space(path)
    searcher = BudgetedOptunaSearch(
        space,
        storage=tmp_path / "study.journal",
        study_name="kept",
        plan=lambda values, name: plan_trial(values, name=name, axis_values={k: values[k] for k in space.axes}),
        on_skip=extra.pop("on_skip", lambda *args: pytest.fail(f"nothing is over budget here: {args}")),
        **extra,
    )
    searcher.slots = slots
    return searcher


def _study(tmp_path: Path) -> optuna.Study:
    """The study as another process sees it (the journal file), not the searcher's own object."""
    return optuna.load_study(study_name="kept", storage=journal_storage(tmp_path / "study.journal"))


def _keys(config: dict) -> list[str]:
    return [spec.key for spec in unit_of(config).members]


def _suggest(searcher: BudgetedOptunaSearch, trial_id: str) -> Any:
    """``searcher.suggest`` as Tune's loop ends up with it: asked again while it answers None (its
    next configurations still being planned), after the planner's batches are done."""
    while (config := searcher.suggest(trial_id)) is None and searcher._planning:
        ray.wait([ref for _, ref in searcher._planning], num_returns=len(searcher._planning))
    return config


def _row(searcher: BudgetedOptunaSearch, epoch: int, *, accuracy: float = 0.5, **flags: Any) -> dict[str, Any]:
    """One epoch's metrics as a lone trial reports them (the accuracy under the searcher's metric)."""
    return {
        "epoch": epoch,
        "epochs_planned": 4,
        searcher.metric: accuracy,
        "epsilon": 1.0,
        "delta": 1e-5,
        "accountant": "rdp",
        "pruned": False,
        "diverged": None,
        "stopped_by_budget": False,
        **flags,
    }


def test_issued_configurations_count_against_the_cap_and_the_last_pack_is_cut(tmp_path: Path, local_ray) -> None:
    searcher = _searcher(tmp_path, trials=5, vectorize=2)
    try:
        configs = []
        while (config := _suggest(searcher, f"t{len(configs)}")) is not searcher.FINISHED:
            configs.append(config)
        # The slot's first pack is one round (width 2); the next holds up to 3 rounds, cut to the cap.
        assert [len(_keys(config)) for config in configs] == [2, 3]
        assert searcher._issued == 5
        assert searcher.suggest("one-more") is searcher.FINISHED
        assert set(searcher._live) == {f"t{i}" for i in range(len(configs))}
        numbers = sorted(n for members in searcher._live.values() for n in members.values())
        assert numbers == list(range(5))  # in order: the searcher's first batch, then the actors'
    finally:
        searcher.close()


def test_a_lone_trial_is_told_once_whatever_reaches_the_searcher_after_its_end(tmp_path: Path, local_ray) -> None:
    searcher = _searcher(tmp_path, slots=2)
    try:
        first, second = _suggest(searcher, "a"), _suggest(searcher, "b")
        (key_a,), (key_b,) = _keys(first), _keys(second)
        searcher.on_trial_result("a", _row(searcher, 1, accuracy=0.3))
        assert searcher._last_rows.get(key_a).epoch == 1
        # Its last epoch arrives as a result (it ended normally) and then again with the completion.
        searcher.on_trial_result("a", _row(searcher, 4, accuracy=0.8))
        assert _study(tmp_path).trials[0].state == States.COMPLETE
        assert searcher._live["a"] == {}  # told members leave the live trial; Tune still has it
        searcher.on_trial_complete("a", _row(searcher, 4, accuracy=0.1))
        assert "a" not in searcher._live and key_a not in searcher._last_rows and key_a not in searcher._asked
        assert _study(tmp_path).trials[0].value == 0.8  # not told again, not overwritten
        assert 0 in searcher._finished
        # A completion Tune reports twice, or for a trial this searcher never issued, changes nothing.
        searcher.on_trial_complete("a", _row(searcher, 4))
        searcher.on_trial_complete("never-issued", _row(searcher, 4))
        assert _study(tmp_path).trials[1].state == States.RUNNING and key_b in searcher._asked
    finally:
        searcher.close()


#: How a lone trial ended (its last row's epoch and flags, or None: no epoch), whether Tune saw an
#: error, and the state Optuna is told.
ENDINGS = {
    "died": (None, True, States.FAIL),  # the worker died before its first epoch
    "pruned": ({"epoch": 2, "pruned": True}, False, States.PRUNED),  # stopped at a rung
    "diverged": ({"epoch": 2, "diverged": "loss is NaN"}, False, States.FAIL),  # a NaN loss
    "failed-mid-way": ({"epoch": 3}, True, States.FAIL),  # an error before its last epoch
    "failed-after-its-end": ({"epoch": 4}, True, States.COMPLETE),  # an error after its last epoch: it was done
    "completed": ({"epoch": 4}, False, States.COMPLETE),
}


def test_each_way_a_trial_ends_is_told_as_its_optuna_state(tmp_path: Path, local_ray) -> None:
    searcher = _searcher(tmp_path, trials=len(ENDINGS), slots=len(ENDINGS))  # one actor start for all
    try:
        numbers = {}
        for name in ENDINGS:
            _suggest(searcher, name)
            numbers[name] = next(iter(searcher._live[name].values()))
        for name, (last, error, _) in ENDINGS.items():
            row = None if last is None else _row(searcher, accuracy=0.6, **last)
            searcher.on_trial_complete(name, row, error=error)
        trials = _study(tmp_path).trials
        for name, (_, _, state) in ENDINGS.items():
            told = trials[numbers[name]]
            assert told.state == state, name
            # A pruned trial carries its last intermediate value (what TPE reads of it); a failed one none.
            assert told.value is None if state == States.FAIL else told.value == 0.6, name
        assert searcher._live == {} and searcher._asked == {} and not searcher._last_rows
    finally:
        searcher.close()


def test_over_budget_suggestions_are_skipped_told_pruned_and_not_issued(tmp_path: Path, local_ray) -> None:
    skipped: list[tuple[Any, dict, str]] = []
    searcher = _searcher(
        tmp_path,
        budget=0.01,
        max_consecutive_skips=5,
        on_skip=lambda planned, values, reason: skipped.append((planned, values, reason)),
    )
    try:
        assert searcher.suggest("t") is searcher.FINISHED  # five skips in a row: the space has nothing within budget
        assert len(skipped) == 5 and all(planned.planned_epsilon > 0.01 for planned, _, _ in skipped)
        assert searcher._issued == 0 and searcher._live == {}
        study = _study(tmp_path)
        assert [t.state for t in study.trials[:5]] == [States.PRUNED] * 5
        assert all("planned_epsilon" in t.user_attrs for t in study.trials[:5])
    finally:
        searcher.close()


def test_fail_abandoned_fails_what_no_live_trial_runs_and_nothing_else(tmp_path: Path, local_ray) -> None:
    searcher = _searcher(tmp_path, trials=20, vectorize=2)
    try:
        live = searcher.suggest("pack")
        searcher.plan_ahead()
        # The batches asked ahead: open in the study, handed to no one.
        ray.wait([ref for _, ref in searcher._planning], num_returns=len(searcher._planning))
        running = [t.number for t in _study(tmp_path).trials if t.state == States.RUNNING]
        handed_out = set(searcher._live["pack"].values())
        assert handed_out == set(range(len(_keys(live)))) and len(running) > len(handed_out)
        failed = searcher.fail_abandoned()
        assert sorted(failed) == sorted(set(running) - handed_out)
        study = _study(tmp_path)
        assert all(study.trials[n].state == States.RUNNING for n in handed_out)
        assert all(
            study.trials[n].state == States.FAIL and "dpsweep.fail_reason" in study.trials[n].user_attrs for n in failed
        )
        assert searcher.fail_abandoned() == []  # nothing twice
    finally:
        searcher.close()


def test_one_trial_units_ask_the_slots_and_one_more_before_a_result(tmp_path: Path, local_ray) -> None:
    # digits_cnn trains one trial per unit under vectorize: auto (sweeps.planning.packing.AUTO_MODELS).
    searcher = _searcher(tmp_path, model="digits_cnn", vectorize="auto", trials=12, slots=2)
    try:
        configs = [_suggest(searcher, name) for name in ("a", "b", "c")]  # Tune's 2 slots, and one waiting
        assert all(len(_keys(config)) == 1 for config in configs)
        searcher.plan_ahead()
        assert len(_study(tmp_path).trials) == 3
        assert searcher.suggest("d") is None  # not FINISHED: Tune asks again after its next step
        searcher.on_trial_complete("a", _row(searcher, 4, accuracy=0.7))
        searcher._collect()  # room for one more, asked now that TPE has a result
        assert [t.state for t in _study(tmp_path).trials] == [States.COMPLETE] + [States.RUNNING] * 3
        assert searcher.suggest("d") not in (None, searcher.FINISHED)
    finally:
        searcher.close()


def test_packs_ask_a_packs_worth_ahead(tmp_path: Path, local_ray) -> None:
    searcher = _searcher(tmp_path, vectorize="auto", trials=100, slots=2)  # mlp: packs of 16 x 3 rounds
    try:
        first = searcher.suggest("pack")
        assert len(_keys(first)) == 16  # each slot's first pack is one round
        searcher._collect()
        assert len(_study(tmp_path).trials) >= 16 * 2 + 48  # a round per slot, then a pack's worth
    finally:
        searcher.close()
