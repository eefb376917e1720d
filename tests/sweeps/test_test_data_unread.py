"""No decision of a sweep reads test data: with the test labels permuted, it makes exactly the same choices.

The same sweep (a public seed, so every random choice repeats) runs twice through the real
launcher, real Ray, Optuna and MLflow: once on digits as shipped, once with the test split's
labels permuted in every process (Ray's workers included) by a ``sitecustomize`` module the test
puts on PYTHONPATH. Pruning, Optuna's suggestions and the values it was told, the search points,
the confirmation nominees, each ε bound's chosen configuration and which refit run is its
registered model must be identical; only the reported test accuracies may change, and they must
(else the permutation did not reach them).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests._mlflow_store import empty_sqlite_store

pytestmark = pytest.mark.slow

SITECUSTOMIZE = """
import numpy as np
import torch
from torch.utils.data import TensorDataset

import dp_core.data as data

_load_digits = data._load_digits


def _permuted_test_labels():
    splits = _load_digits()
    images, labels = splits.test.tensors
    order = torch.from_numpy(np.random.default_rng(2026).permutation(len(labels)))
    return data.dataclasses.replace(splits, test=TensorDataset(images, labels[order]))


data._load_digits = _permuted_test_labels
"""

OPTUNA = """
name: {name}
description: optuna with pruning and confirmation
fixed: {{dataset: digits, model: mlp, optimizer: sgd, batch_size: 128, epochs: 6, delta: 1.0e-5}}
axes:
  target_epsilon: {{low: 1.0, high: 6.0, log: true}}
  max_grad_norm: {{low: 0.3, high: 3.0, log: true}}
  lr: {{low: 0.3, high: 4.0, log: true}}
epsilon_budget: 8.0
search: optuna
trials: 14
objective: single
pruner: asha
resources: {{cpus: 2, gpus: 0}}
confirm: {{top: 1, seeds: 2}}
seed: 11
"""


def _sweep(folder: Path, template: str, *, permuted: bool) -> dict:
    folder.mkdir(parents=True)
    space = folder / f"{folder.name}.yaml"
    space.write_text(template.format(name=folder.name))
    env = dict(os.environ)
    if permuted:
        (folder / "hook").mkdir()
        (folder / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join([str(folder / "hook"), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--tracking-uri",
            empty_sqlite_store(folder / "mlflow.db"),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sweep_dir,) = [p for p in (folder / "dpsweep_results").iterdir() if p.is_dir()]
    with open(sweep_dir / "frontier" / "frontier.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    outcome = {
        "search": sorted(
            (r["trial"], r["epoch"], r["epsilon"], r["val_accuracy"], r["on_frontier"])
            for r in rows
            if r["kind"] == "search"
        ),
        "confirmed": sorted(
            (r["trial"], r["epoch"], r["val_accuracy"], r["best_for_epsilon"]) for r in rows if r["kind"] == "confirmed"
        ),
        "test": sorted((r["trial"], r["epoch"], r["test_accuracy_mean"]) for r in rows if r["kind"] == "confirmed"),
        "best": [
            {k: v for k, v in b.items() if not k.startswith("test_") and k != "run_ids"}
            for b in json.loads((sweep_dir / "frontier" / "best_per_epsilon.json").read_text())
        ],
    }
    # Which refit run each bound's registered model is: fixed before any was evaluated.
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    registered = client.get_registered_model(f"dpsweep-{folder.name}")
    outcome["models"] = sorted(
        (alias, client.get_run(client.get_model_version(registered.name, version).run_id).info.run_name)
        for alias, version in registered.aliases.items()
    )
    journals = list((folder / "dpsweep_results").glob("*-optuna.journal"))
    if journals:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journals[0])))
        (study,) = optuna.study.get_all_study_summaries(storage)
        trials = optuna.load_study(study_name=study.study_name, storage=storage).trials
        outcome["optuna"] = [(t.number, t.state.name, t.params, t.values, dict(t.intermediate_values)) for t in trials]
    return outcome


def test_permuting_the_test_labels_changes_no_decision(tmp_path: Path) -> None:
    # Optuna with ASHA: what it suggests after its startup trials depends on what it was told,
    # what is pruned on what the board saw, and then the confirmation stage chooses.
    shipped = _sweep(tmp_path / "shipped", OPTUNA, permuted=False)
    permuted = _sweep(tmp_path / "permuted", OPTUNA, permuted=True)
    assert shipped["confirmed"], "the confirmation stage confirmed nothing"
    assert shipped["models"], "no model registered"
    for what in ("search", "confirmed", "best", "optuna", "models"):
        assert shipped.get(what) == permuted.get(what), what
    # The reported figures did read the permuted labels: far below what the real ones give.
    assert shipped["test"] != permuted["test"]
    assert max(float(t) for _, _, t in permuted["test"]) < 0.3 < min(float(t) for _, _, t in shipped["test"])
