"""End to end: a sweep of an own model (``model: "module:function"`` beside the space file, not
installed) on own npz data, through ``python -m sweeps.launch`` on real local Ray; then
``python -m dp_core.train --config`` retrains best_per_epsilon.json's configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests._mlflow_store import empty_sqlite_store
from tests._own_data import write_npz
from tests.sweeps._sweep_harness import ENV, ROOT, RayCluster

pytestmark = pytest.mark.slow

# The module notes where it was imported from, so that the test sees which copy each process used.
MODULE = """
import math
import os
import torch.nn as nn

with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}} {{__file__}}\\n")


def build(*, input_shape, num_classes, width=8):
    flat = math.prod(input_shape)
    return nn.Sequential(nn.Linear(flat, width), nn.ReLU(), nn.Linear(width, num_classes))
"""


def own_model_space(folder: Path, module: str) -> Path:
    """An own model on own npz digits (300 train, 100 test), two widths; one ε bound confirmed twice."""
    write_npz(folder / "digits.npz")
    (folder / f"{module}.py").write_text(MODULE.format(log=str(folder / "imported_from.txt")))
    space = {
        "fixed": {
            "dataset": {"format": "npz", "path": "digits.npz", "classes": 10},
            "model": f"{module}:build",
            "batch_size": 64,
            "epochs": 1,
            "target_epsilon": 0.9,  # in (0.5, 1.0]: the one ε bound under the budget that the trials reach
            "delta": 1.0e-3,
            "accountant": "rdp",
        },
        "axes": {"model_kwargs.width": [8, 32]},
        "epsilon_budget": 1.0,
        "search": "grid",
        "pruner": "none",
        "resources": {"cpus": 1, "gpus": 0},
        "confirm": {"top": 1, "seeds": 2, "baseline": False, "refit": False},
    }
    path = folder / "own_model.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_an_own_model_sweeps_on_local_ray_and_retrains_from_best_per_epsilon(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    space_dir = tmp_path / "project"
    space_dir.mkdir()
    space = own_model_space(space_dir, "e2e_own_net")
    tracking = empty_sqlite_store(tmp_path / "mlflow.db")
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.launch", "--space", str(space), "--address", ray_cluster.address]
        + ["--tracking-uri", tracking, "--results-dir", str(tmp_path / "results")],
        cwd=tmp_path,  # not the space's folder: nothing finds the module by the working directory
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("dpsweep").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("dpsweep.role") == "sweep")
    children = sorted((r for r in runs if r.data.tags.get("dpsweep.role") == "trial"), key=lambda r: r.info.run_name)
    assert [c.data.tags["dpsweep.outcome"] for c in children] == ["completed", "completed"]
    # Each trial's width is a param of its own (its axis), and the code folder it imported the model from.
    assert [c.data.params["axis.model_kwargs.width"] for c in children] == ["8", "32"]
    assert [c.data.params["model_kwargs"] for c in children] == ["{'width': 8}", "{'width': 32}"]
    assert all(c.data.params["model"] == "e2e_own_net:build" for c in children)
    assert all(c.data.params["code"] == repr([str(space_dir)]) for c in children)

    # The trial workers imported Ray's shipped copy of the module, the driver the file beside the space.
    imports = [line.split(" ", 1)[1] for line in (space_dir / "imported_from.txt").read_text().splitlines()]
    assert str(space_dir / "e2e_own_net.py") in imports  # the driver's check, before anything started
    assert any("runtime_resources" in line and "py_modules_files" in line for line in imports), imports

    folder = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "artifacts")))
    best = [b for b in json.loads((folder / "best_per_epsilon.json").read_text()) if b.get("train_config")]
    assert [b["epsilon_at_most"] for b in best] == [1.0], best
    train_config = best[0]["train_config"]
    assert train_config["model"] == "e2e_own_net:build" and train_config["code"] == [str(space_dir)]
    width = train_config["model_kwargs"]["width"]
    assert width in (8, 32)

    # The same configuration, trained again by the trainer alone, from elsewhere: it imports the same module.
    (tmp_path / "best.yaml").write_text(json.dumps({**train_config, "seed": 7}))
    retrain = subprocess.run(
        [sys.executable, "-m", "dp_core.train", "--config", str(tmp_path / "best.yaml")],
        cwd=tmp_path,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    metrics = json.loads(retrain.stdout[retrain.stdout.index("{") :])
    assert metrics["epsilon"] <= 1.0 and metrics["config"]["model_kwargs"] == {"width": width}
