"""The Optuna searcher on real Ray (its planner actor) and a real Optuna journal."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import ray

from sweeps.driver.search import BudgetedOptunaSearch, journal_storage
from sweeps.planning import plan_trial
from sweeps.privacy.adaptive import RdpFilter
from sweeps.privacy.ledger import PrivacyLedger
from sweeps.privacy.mechanism import TrialMechanism
from sweeps.protocol import EpochRow, encode_rows, unit_of
from sweeps.space import load_space
from sweeps.workers.trial import CHECKPOINT_EVERY_FIELD

SPACE = """
name: searched
description: searcher test
fixed:
  dataset: digits
  model: mlp
  batch_size: 128
  epochs: 4
  noise_multiplier: 1.0
  delta: 1.0e-5
  accountant: rdp
axes:
  lr: {low: 0.1, high: 3.0, log: true}
epsilon_budget: 50.0
search: optuna
trials: 4
pruner: none
vectorize: 2
resources: {cpus: 1, gpus: 0}
seed: 0
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _row(epoch: int, *, accuracy: float = 0.5) -> EpochRow:
    return EpochRow(epoch=epoch, epochs_planned=4, val_accuracy=accuracy, epsilon=1.0, delta=1e-5, accountant="rdp")


def test_a_pack_member_is_told_to_optuna_when_it_ends_not_when_its_pack_does(tmp_path: Path, local_ray) -> None:
    path = tmp_path / "searched.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    searcher = BudgetedOptunaSearch(
        space,
        storage=tmp_path / "study.journal",
        study_name="searched",
        plan=lambda values, name: plan_trial(values, name=name, axis_values={k: values[k] for k in space.axes}),
        on_skip=lambda *args: pytest.fail(f"nothing is over budget here: {args}"),
    )
    searcher.slots = 1
    try:
        config = searcher.suggest("pack-1")
        # The space's checkpoint_every_minutes (the default here), in seconds, as the grid's trials get it.
        assert config[CHECKPOINT_EVERY_FIELD] == 60.0 * space.checkpoint_every_minutes == 600.0
        first, second = (spec.key for spec in unit_of(config).members)
        study = optuna.load_study(study_name="searched", storage=journal_storage(tmp_path / "study.journal"))
        assert [t.state for t in study.trials[:2]] == [optuna.trial.TrialState.RUNNING] * 2

        # The first member is through its 4 epochs; the second, in the pack's next round, at epoch 1.
        searcher.on_trial_result(
            "pack-1", {"members": encode_rows({first: [_row(3), _row(4, accuracy=0.9)], second: [_row(1)]})}
        )
        states = {t.number: t for t in study.trials}
        assert states[0].state == optuna.trial.TrialState.COMPLETE and states[0].value == 0.9
        assert states[1].state == optuna.trial.TrialState.RUNNING

        # Its pack's end tells the rest, and the first member not a second time.
        searcher.on_trial_complete("pack-1", {"members": encode_rows({second: [_row(4, accuracy=0.7)]})})
        states = {t.number: t for t in study.trials}
        assert (states[0].value, states[1].state, states[1].value) == (0.9, optuna.trial.TrialState.COMPLETE, 0.7)
    finally:
        searcher.close()


def _searcher(tmp_path: Path, space, **extra) -> BudgetedOptunaSearch:
    return BudgetedOptunaSearch(
        space,
        storage=tmp_path / "study.journal",
        study_name="searched",
        plan=lambda values, name: plan_trial(values, name=name, axis_values={k: values[k] for k in space.axes}),
        on_skip=extra.pop("on_skip", lambda *args: None),
        **extra,
    )


def test_a_resumed_searcher_tells_each_trial_once_and_fails_what_nothing_will_run(tmp_path: Path, local_ray) -> None:
    # The launcher SIGKILLed: Tune restores the pack, whose first member had ended and been told,
    # and replays it; a configuration asked ahead was never handed out.
    path = tmp_path / "searched.yaml"
    path.write_text(SPACE.replace("trials: 4", "trials: 8"))
    space = load_space(path)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    searcher = _searcher(tmp_path, space, ledger=ledger)
    searcher.slots = 1
    config = searcher.suggest("pack-1")
    first, second = (spec.key for spec in unit_of(config).members)
    assert {entry.key for entry in ledger.entries()} == {first, second}  # recorded before Tune had them
    searcher.on_trial_result("pack-1", {"members": encode_rows({first: [_row(4, accuracy=0.9)]})})
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.plan_ahead()  # the actors ask ahead: those trials are RUNNING in the study
    searcher.close()  # what was asked ahead is marked FAIL when the sweep stops
    study = optuna.load_study(study_name="searched", storage=journal_storage(tmp_path / "study.journal"))
    ahead = [t for t in study.trials if t.number >= 2]
    assert ahead and all(
        t.state == optuna.trial.TrialState.FAIL and "dpsweep.fail_reason" in t.user_attrs for t in ahead
    )

    # A third trial open in the study that no restored Ray trial runs (handed out after Tune's last save).
    stray = study.ask()
    resumed = _searcher(tmp_path, space, ledger=PrivacyLedger(tmp_path / "ledger.jsonl"))
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert study.trials[stray.number].state == optuna.trial.TrialState.FAIL
    assert resumed._issued == 2
    # The replay: the first member ends again (told before), then the pack completes.
    resumed.on_trial_result("pack-1", {"members": encode_rows({first: [_row(1), _row(4, accuracy=0.2)]})})
    resumed.on_trial_complete("pack-1", {"members": encode_rows({second: [_row(4, accuracy=0.7)]})})
    states = {t.number: t for t in study.trials}
    assert (states[0].state, states[0].value) == (optuna.trial.TrialState.COMPLETE, 0.9)  # not told again
    assert (states[1].state, states[1].value) == (optuna.trial.TrialState.COMPLETE, 0.7)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    resumed.close()


def test_the_sweep_filter_skips_what_would_take_the_sweep_over_its_budget(tmp_path: Path, local_ray) -> None:
    path = tmp_path / "searched.yaml"
    path.write_text(SPACE.replace("trials: 4", "trials: 6").replace("vectorize: 2", "vectorize: 1"))
    space = load_space(path)
    one = TrialMechanism.from_plan(
        plan_trial(space.trial_config({"lr": 1.0}, number=0), name="t", axis_values={"lr": 1.0}).plan
    )
    # A sweep ε with room for exactly two such trials.
    sweep_filter = next(
        f
        for f in (RdpFilter.for_budget(epsilon=e / 20, delta=1e-5) for e in range(20, 2000))
        if 2 * f.cost(one) <= f.capacity < 3 * f.cost(one)
    )
    skipped: list[str] = []
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    searcher = _searcher(
        tmp_path,
        space,
        ledger=ledger,
        sweep_filter=sweep_filter,
        on_skip=lambda planned, values, reason: skipped.append(reason),
    )
    searcher.slots = 3
    try:
        handed_out = [searcher.suggest(f"t{i}") for i in range(3)]
        assert [c is not None and c != searcher.FINISHED for c in handed_out] == [True, True, False]
        assert len(ledger.entries()) == 2
        assert skipped and all("privacy filter is full" in reason for reason in skipped)
        spent = sum(sweep_filter.cost(entry.mechanism()) for entry in ledger.entries())
        assert spent <= sweep_filter.capacity
    finally:
        searcher.close()
