"""End to end: an Optuna sweep of a model that trains one trial per unit asks TPE for the next
configurations after results come in, not dozens ahead (`python -m sweeps.launch`, real local Ray,
real Optuna journal, sqlite MLflow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps.driver.search import journal_storage
from sweeps.planning.packing import AUTO_MODELS
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV, RayCluster

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

# digits_cnn under vectorize: auto trains one trial per unit (it is not in AUTO_MODELS). One epoch
# of small batches keeps each trial to a second or two.
CNN_SPACE = """
name: cnnask
description: optuna sweep of one-trial units
fixed:
  dataset: digits
  model: digits_cnn
  batch_size: 256
  epochs: 1
  noise_multiplier: 1.0
  delta: 1.0e-5
  accountant: rdp
axes:
  lr: {low: 0.1, high: 3.0, log: true}
  max_grad_norm: {low: 0.5, high: 2.0, log: true}
epsilon_budget: 100.0
search: optuna
trials: 6
pruner: none
vectorize: auto
confirm: off
resources: {cpus: 1, gpus: 0}
seed: 0
"""


def test_an_optuna_cnn_sweep_asks_at_most_the_slots_and_one_before_its_first_result(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    assert "digits_cnn" not in AUTO_MODELS, "the space must train one trial per unit"
    (tmp_path / "cnnask.yaml").write_text(CNN_SPACE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(tmp_path / "cnnask.yaml"),
            "--tracking-uri",
            empty_sqlite_store(tmp_path / "mlflow.db"),
            "--results-dir",
            str(tmp_path / "results"),
            "--address",
            ray_cluster.address,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    slots = int(float(re.search(r" on ([\d.]+) slots", done.stdout).group(1)))

    storage = journal_storage(next((tmp_path / "results").glob("*-optuna.journal")))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    told = [t for t in study.trials if t.state.is_finished()]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in told) == 6
    # Every trial's start is when Optuna was asked for it; the first result told is the earliest
    # completion. Asked before it: the slots' trials and the one Tune keeps waiting, no more.
    first_result = min(t.datetime_complete for t in told)
    asked_blind = [t.number for t in study.trials if t.datetime_start < first_result]
    assert len(asked_blind) <= slots + 1, (slots, asked_blind)
