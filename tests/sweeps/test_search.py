"""The Optuna searcher on real Ray (its planner actor) and a real Optuna journal."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import ray

from sweeps.packing import encode_member_rows, member_specs
from sweeps.planning import plan_trial
from sweeps.search import BudgetedOptunaSearch, journal_storage
from sweeps.space import load_space
from sweeps.trial import trial_spec

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


def _row(epoch: int, *, accuracy: float = 0.5) -> dict:
    return {"epoch": epoch, "epochs_planned": 4, "test_accuracy": accuracy, "epsilon": 1.0, "delta": 1e-5,
            "accountant": "rdp", "pruned": False, "stopped_by_budget": False}


def test_a_pack_member_is_told_to_optuna_when_it_ends_not_when_its_pack_does(tmp_path: Path, local_ray) -> None:
    path = tmp_path / "searched.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    searcher = BudgetedOptunaSearch(
        space, storage=tmp_path / "study.journal", study_name="searched",
        plan=lambda values, name: plan_trial(values, name=name, axis_values={k: values[k] for k in space.axes}),
        on_skip=lambda *args: pytest.fail(f"nothing is over budget here: {args}"),
    )
    searcher.slots = 1
    try:
        config = searcher.suggest("pack-1")
        first, second = (spec["key"] for spec in member_specs(trial_spec(config)))
        study = optuna.load_study(study_name="searched", storage=journal_storage(tmp_path / "study.journal"))
        assert [t.state for t in study.trials[:2]] == [optuna.trial.TrialState.RUNNING] * 2

        # The first member is through its 4 epochs; the second, in the pack's next round, at epoch 1.
        searcher.on_trial_result("pack-1", {"members": encode_member_rows(
            {first: [_row(3), _row(4, accuracy=0.9)], second: [_row(1)]})})
        states = {t.number: t for t in study.trials}
        assert states[0].state == optuna.trial.TrialState.COMPLETE and states[0].value == 0.9
        assert states[1].state == optuna.trial.TrialState.RUNNING

        # Its pack's end tells the rest, and the first member not a second time.
        searcher.on_trial_complete("pack-1", {"members": encode_member_rows({second: [_row(4, accuracy=0.7)]})})
        states = {t.number: t for t in study.trials}
        assert (states[0].value, states[1].state, states[1].value) == (0.9, optuna.trial.TrialState.COMPLETE, 0.7)
    finally:
        searcher.close()
