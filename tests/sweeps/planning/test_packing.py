"""Packing planned trials into units of work (pure), and packed sweeps on real Ray and MLflow."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.planning import plan_trial
from sweeps.planning.packing import AUTO_PACK_SIZE, PACK_DEPTH, group_key, pack_limit, pack_size, pack_spec, pack_trials
from sweeps.protocol import decode_unit, encode_unit
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV, RayCluster

ROOT = Path(__file__).resolve().parents[3]
BASE = {"dataset": "digits", "model": "mlp", "batch_size": 256, "epochs": 3, "delta": 1e-5, "accountant": "rdp"}


def _planned(count: int, **overrides) -> list:
    return [
        plan_trial(
            {**BASE, "noise_multiplier": 1.0 + i / 10, **overrides},
            name=f"trial_{i:04d}",
            axis_values={"noise_multiplier": 1.0 + i / 10},
        )
        for i in range(count)
    ]


def test_auto_packs_only_the_models_that_train_faster_together() -> None:
    assert pack_size("auto", "mlp") == AUTO_PACK_SIZE
    assert pack_size("auto", "digits_cnn") == 1
    assert pack_size(3, "digits_cnn") == 3 and pack_size(1, "mlp") == 1


def test_packs_fill_every_slot_and_keep_grid_order() -> None:
    trials = _planned(20)
    packs = pack_trials(trials, vectorize=8, slots=2)
    assert [len(p) for p in packs] == [10, 10]  # not 8 + 8 + 4: the last round would leave a slot idle
    assert [t.name for p in packs for t in p] == [t.name for t in trials]
    deep = pack_trials(trials, vectorize=4, slots=1)  # up to PACK_DEPTH x 4 members each
    assert len(deep) == math.ceil(20 / (4 * PACK_DEPTH)) and max(map(len, deep)) - min(map(len, deep)) <= 1
    assert [len(p) for p in pack_trials(trials, vectorize=8, slots=1)] == [20]
    assert [len(p) for p in pack_trials(trials[:3], vectorize=8, slots=4)] == [1, 1, 1]
    assert all(len(p) == 1 for p in pack_trials(trials, vectorize=1, slots=2))


def test_trials_that_cannot_share_a_unit_are_not_packed_together() -> None:
    small, large = _planned(2), _planned(2, batch_size=64)  # another sampling rate: other steps
    packs = pack_trials([small[0], large[0], small[1], large[1]], vectorize=8, slots=1)
    assert sorted(sorted(t.plan.sample_rate for t in p) for p in packs) == [[64 / 1437] * 2, [256 / 1437] * 2]
    # A model with dropout cannot be vectorised (each configuration would need its own dropout stream).
    dropout = _planned(3, dataset="mnist", model="mnist_cnn", batch_size=600)
    assert [len(p) for p in pack_trials(dropout, vectorize=8, slots=1)] == [1, 1, 1]


def test_trials_with_another_optimizer_are_another_group() -> None:
    sgd, adam = _planned(2), _planned(2, optimizer="adam")
    packs = pack_trials([sgd[0], adam[0], sgd[1], adam[1]], vectorize=8, slots=1)
    assert sorted(len(p) for p in packs) == [1, 1, 2]  # the SGD pair together; Adam cannot be vectorised
    assert pack_limit(adam[0], vectorize=8) == 1 and pack_limit(sgd[0], vectorize=8) == 8
    assert group_key(sgd[0]) == group_key(sgd[1]) != group_key(adam[0])


def test_trials_with_parameter_averaging_run_alone() -> None:
    plain, averaged = _planned(2), _planned(2, ema_decay=0.999)  # ema_decay as a space's axis sets it
    packs = pack_trials([plain[0], averaged[0], plain[1], averaged[1]], vectorize=8, slots=1)
    assert sorted(len(p) for p in packs) == [1, 1, 2]  # the plain pair together; each averaged trial alone
    assert all(t.train_config["ema_decay"] == 0.999 for p in packs if len(p) == 1 for t in p)
    assert pack_limit(averaged[0], vectorize=8) == 1 and group_key(plain[0]) != group_key(averaged[0])


def test_a_pack_spec_carries_every_member_and_a_pack_of_one_is_the_trial() -> None:
    trials = _planned(3)
    spec = pack_spec(trials, width=8)
    assert [m.key for m in spec.members] == [t.key for t in trials]
    assert pack_spec(trials[:1], width=8).members == (trials[0].spec(),)
    # What a worker gets back is what the driver sent, plans and infinities included.
    assert decode_unit(encode_unit(spec)) == spec


def test_a_pack_trains_whole_rounds_of_its_members_at_once() -> None:
    trials = _planned(10)
    assert pack_spec(trials, width=8).width == 5  # two rounds of 5, not 8 and then 2
    assert pack_spec(trials, width=16).width == 10
    assert pack_spec(trials, width=3).width == 3


SPACE = """
name: {name}
description: packed sweep test
fixed:
  dataset: digits
  model: mlp
  batch_size: 128
  epochs: 4
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.0, 2.0]
  lr: [2.0, 0.5]
  max_grad_norm: [0.5, 2.0]
epsilon_budget: 20.0
search: grid
pruner: none
vectorize: {vectorize}
resources: {{cpus: 1, gpus: 0}}
confirm: off  # the confirmation stage is tested in test_launch_e2e, test_confirm and the fault matrix
seed: 0  # the packed and the lone sweep draw the same streams (a secret root would differ per sweep)
"""


def _launch(folder: Path, space: Path, cluster: RayCluster) -> tuple[MlflowClient, list]:
    """``python -m sweeps.launch`` on ``space`` with a sqlite MLflow store in ``folder``; its runs."""
    uri = empty_sqlite_store(folder / "mlflow.db")
    done = subprocess.run(
        # The session's cluster of 2 CPUs: the slots, and so the packs and what the board prunes, of a
        # 2-core machine, on any.
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--address",
            cluster.address,
            "--tracking-uri",
            uri,
            "--results-dir",
            str(folder / "results"),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**ENV, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([client.get_experiment_by_name("dpsweep").experiment_id])


def _sweep(tmp_path: Path, vectorize: str, cluster: RayCluster) -> dict[str, dict]:
    folder = tmp_path / vectorize
    folder.mkdir()
    space = folder / f"packed_{vectorize}.yaml"
    space.write_text(SPACE.format(name=f"packed_{vectorize}", vectorize=vectorize))
    client, runs = _launch(folder, space, cluster)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("dpsweep.role") == "trial"}
    return {
        name: {
            "outcome": run.data.tags["dpsweep.outcome"],
            "status": run.info.status,
            **{
                key: [
                    (m.step, m.value)
                    for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
                ]
                for key in ("val_accuracy", "epsilon", "val_loss", "train_loss")
            },
        }
        for name, run in children.items()
    }


@pytest.mark.slow
def test_a_packed_sweep_logs_each_member_as_the_trial_it_would_be_alone(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    # Width 2: each of the two packs of 4 trains two members, then the other two in their places.
    packed, alone = _sweep(tmp_path, "2", ray_cluster), _sweep(tmp_path, "off", ray_cluster)
    assert sorted(packed) == sorted(alone) == [f"trial_{i:04d}" for i in range(8)]
    for name, mine in packed.items():
        theirs = alone[name]
        assert mine["outcome"] == theirs["outcome"] == "completed" and mine["status"] == "FINISHED"
        assert [s for s, _ in mine["val_accuracy"]] == [1, 2, 3, 4]  # each epoch logged once
        assert mine["epsilon"] == theirs["epsilon"]  # the same plan, to the last bit
        for (step, a), (_, b) in zip(mine["val_accuracy"], theirs["val_accuracy"]):
            assert a == pytest.approx(b, abs=1.01 / 144), (name, step)  # at most one validation example flips
        for (step, a), (_, b) in zip(mine["val_loss"], theirs["val_loss"]):
            assert a == pytest.approx(b, rel=1e-3), (name, step)
        assert mine["train_loss"] == theirs["train_loss"] == []  # an un-noised statistic: never logged


OPTUNA_SPACE = """
name: packed_optuna
description: packed optuna sweep test
fixed:
  dataset: digits
  model: mlp
  batch_size: 128
  epochs: 6
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.2]                    # one ε band: every member competes at the rungs
  lr: {low: 0.01, high: 3.0, log: true}      # from hopeless to good: the slow ones get pruned
epsilon_budget: 10.0
search: optuna
trials: 8
pruner: asha
vectorize: 4
resources: {cpus: 1, gpus: 0}
seed: 1
confirm: off  # the confirmation stage is tested in test_launch_e2e, test_confirm and the fault matrix
"""


@pytest.mark.slow
def test_optuna_packs_are_told_to_optuna_member_by_member_and_pruned_by_the_board(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    import optuna

    space = tmp_path / "packed_optuna.yaml"
    space.write_text(OPTUNA_SPACE)
    client, runs = _launch(tmp_path, space, ray_cluster)
    trained = [
        r
        for r in runs
        if r.data.tags.get("dpsweep.role") == "trial" and r.data.tags["dpsweep.outcome"] != "skipped_over_budget"
    ]
    assert len(trained) == 8  # `trials: 8` counts configurations, not packs
    outcomes = sorted(r.data.tags["dpsweep.outcome"] for r in trained)
    assert set(outcomes) <= {"completed", "pruned"} and "pruned" in outcomes, outcomes
    for run in trained:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == list(range(1, len(steps) + 1))  # every epoch once, in order
        assert (len(steps) == 6) == (run.data.tags["dpsweep.outcome"] == "completed")

    from sweeps.driver.search import journal_storage

    storage = journal_storage(next((tmp_path / "results").glob("*-optuna.journal")))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    by_name = {f"trial_{t.number:04d}": t for t in study.trials}
    rungs = {1, 3}  # the board's: grace period max(1, 6 // 4) = 1, reduction factor 3, below 6 epochs
    for run in trained:  # each member told as its own Optuna trial, with its own learning curve
        told = by_name[run.info.run_name]
        expected = (
            optuna.trial.TrialState.COMPLETE
            if run.data.tags["dpsweep.outcome"] == "completed"
            else optuna.trial.TrialState.PRUNED
        )
        assert told.state == expected
        accuracy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        # Optuna is told the accuracy at the rungs and at the last epoch; MLflow has every epoch.
        last = max(accuracy)
        assert told.intermediate_values == pytest.approx({s: a for s, a in accuracy.items() if s in rungs or s == last})
