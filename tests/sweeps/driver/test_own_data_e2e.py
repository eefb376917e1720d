"""End to end: a space with an own dataset, each format, through ``python -m sweeps.launch`` on the session's Ray.

Each sweep is tiny (a few hundred digits rows, 1-2 epochs, two trials): what is tested is that the
data reaches every trial from the driver's one read, that MLflow records its provenance and no
value of it, that ``--resume`` refuses changed data, and that ``best_per_epsilon.json`` trains
again with ``python -m dp_core.train --config`` on the same data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests._mlflow_store import empty_sqlite_store
from tests._own_data import digits_arrays, write_csv, write_image_folder, write_loader, write_npz
from tests.sweeps._sweep_harness import ENV, ROOT, RayCluster

pytestmark = pytest.mark.slow


def _space(dataset: dict, *, model: str = "tabular_mlp", confirm: object = "off") -> dict:
    return {
        "name": "own",
        "fixed": {"dataset": dataset, "model": model, "batch_size": 32, "epochs": 2, "delta": 1.0e-3},
        "axes": {"noise_multiplier": [1.0, 2.0], "lr": [1.0]},
        "epsilon_budget": 50.0,
        "search": "grid",
        "pruner": "none",
        "resources": {"cpus": 1, "gpus": 0},
        "confirm": confirm,
    }


def _launch(folder: Path, space: dict | Path, cluster: RayCluster, *extra: str) -> subprocess.CompletedProcess:
    if isinstance(space, dict):
        (folder / "own.yaml").write_text(yaml.safe_dump(space))
    file = space if isinstance(space, Path) else folder / "own.yaml"
    return subprocess.run(
        [
            sys.executable, "-m", "sweeps.launch", "--space", str(file),
            "--tracking-uri", empty_sqlite_store(folder / "mlflow.db"), "--results-dir", str(folder / "results"),
            "--address", cluster.address, *extra,
        ],
        cwd=folder, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _parent(folder: Path) -> object:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "dpsweep"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]
    return parent, children


def _check_completed(done: subprocess.CompletedProcess, folder: Path, *, shape: str, train: int) -> object:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert f"{train} train" in done.stdout and f"of shape {shape}" in done.stdout
    parent, children = _parent(folder)
    trained = [c for c in children if c.data.tags.get("dpsweep.outcome") == "completed"]
    assert len(trained) == 2 and all("val_accuracy" in c.data.metrics for c in trained)
    (logged,) = parent.inputs.dataset_inputs  # the dataset's provenance, once, on the parent run
    sweep = next(p for p in (folder / "results").iterdir() if p.is_dir())
    digests = json.loads((sweep / "own_datasets.json").read_text())
    assert list(digests.values()) == [logged.dataset.digest]
    return parent, logged, sweep


def test_npz_sweep_logs_provenance_refuses_changed_data_on_resume_and_retrains(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    arrays = digits_arrays(train=300, test=100)
    write_npz(tmp_path / "d.npz", **arrays)
    space = _space({"format": "npz", "path": "d.npz", "classes": 10}, confirm={"top": 1, "seeds": 2})
    done = _launch(tmp_path, space, ray_cluster)
    parent, logged, sweep = _check_completed(done, tmp_path, shape="(64,)", train=300)
    assert logged.dataset.name == "d.npz" and json.loads(logged.dataset.source) == {"uri": str(tmp_path / "d.npz")}
    schema = json.loads(logged.dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["tensor-spec"]["shape"]) for c in schema] == [("inputs", [-1, 64]), ("label", [-1])]
    assert logged.dataset.profile in (None, "", "null")  # no statistic of the values, let alone a value
    assert parent.data.params["fixed.dataset"].count(str(tmp_path / "d.npz")) == 1

    # best_per_epsilon.json trains again, on the same data, from any folder: its path is absolute.
    best = json.loads((sweep / "frontier" / "best_per_epsilon.json").read_text())
    chosen = next(b for b in best if b.get("test_accuracy_mean") is not None)
    assert chosen["train_config"]["dataset"]["path"] == str(tmp_path / "d.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "best.yaml").write_text(yaml.safe_dump(chosen["train_config"]))
    again = subprocess.run(
        [sys.executable, "-m", "dp_core.train", "--config", "best.yaml", "--seed", "12345"],
        cwd=elsewhere, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "test" in again.stdout.lower()

    # The data changes: resuming the sweep on it is refused, before anything is opened again.
    arrays["x_train"][0, 0] += 0.5
    write_npz(tmp_path / "d.npz", **arrays)
    resumed = _launch(tmp_path, space, ray_cluster, "--resume", sweep.name)
    assert resumed.returncode == 2, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"digest {logged.dataset.digest}" in resumed.stderr and "the data changed since" in resumed.stderr


def test_csv_sweep_with_a_test_fraction(tmp_path: Path, ray_cluster: RayCluster) -> None:
    write_csv(tmp_path / "table.csv", rows=400)
    dataset = {"format": "csv", "path": "table.csv", "label": "digit", "test_fraction": 0.25, "classes": 10,
               "bounds": {"low": 0.0, "high": 1.0}}  # fmt: skip
    _check_completed(_launch(tmp_path, _space(dataset), ray_cluster), tmp_path, shape="(64,)", train=300)


def test_image_folder_sweep(tmp_path: Path, ray_cluster: RayCluster) -> None:
    write_image_folder(tmp_path / "images", per_class=40, classes=3)
    dataset = {"format": "image_folder", "path": "images", "image_size": 8,
               "classes": ["class_0", "class_1", "class_2"],
               "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}  # fmt: skip
    done = _launch(tmp_path, _space(dataset, model="digits_cnn"), ray_cluster)
    _check_completed(done, tmp_path, shape="(3, 8, 8)", train=120)


def test_python_loader_sweep_prints_the_label_caveat(tmp_path: Path, ray_cluster: RayCluster) -> None:
    loader = write_loader(tmp_path, module="e2e_own_loader")
    done = _launch(tmp_path, _space({"format": "python", "loader": loader}), ray_cluster)
    parent, logged, _ = _check_completed(done, tmp_path, shape="(64,)", train=300)
    assert "note: the classes were read from the data" in done.stdout
    assert "statistic of the data" in parent.data.tags["dpsweep.data_caveat"]
    assert logged.dataset.source_type == "code" and "e2e_own_loader:load" in logged.dataset.source
    assert not np.isnan(float(parent.data.params["delta"]))


def test_federated_sweep_partitions_own_data(tmp_path: Path, ray_cluster: RayCluster) -> None:
    write_npz(tmp_path / "d.npz")
    space = _space({"format": "npz", "path": "d.npz", "classes": 10})
    space["kind"] = "federated"
    space["fixed"].update({"partition": "iid", "clients": 2, "rounds": 2, "local_epochs": 1})
    del space["fixed"]["epochs"]
    space["axes"] = {"noise_multiplier": [1.0], "lr": [1.0]}
    done = _launch(tmp_path, space, ray_cluster)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    parent, children = _parent(tmp_path)
    assert [c.data.tags.get("dpsweep.outcome") for c in children] == ["completed"]
    assert len(parent.inputs.dataset_inputs) == 1


def test_the_tabular_csv_example_makes_its_data_and_sweeps_it(tmp_path: Path, ray_cluster: RayCluster) -> None:
    example = tmp_path / "tabular_csv"
    shutil.copytree(ROOT / "examples" / "tabular_csv", example, ignore=shutil.ignore_patterns("*.csv"))
    made = subprocess.run([sys.executable, str(example / "make_data.py")], env=ENV, capture_output=True, text=True)
    assert made.returncode == 0 and (example / "breast_cancer.csv").exists(), made.stderr
    done = _launch(example, example / "breast_cancer.yaml", ray_cluster)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "455 train" in done.stdout and "of shape (30,), 2 classes" in done.stdout
    assert "note: the classes were read" not in done.stdout  # declared in the space
    sweep = next(p for p in (example / "results").iterdir() if p.is_dir())
    best = json.loads((sweep / "frontier" / "best_per_epsilon.json").read_text())
    assert any(b.get("test_accuracy_mean") is not None for b in best)
