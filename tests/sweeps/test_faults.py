"""Faults in what a sweep is given: a trial that diverges, a space file that is wrong.

Each test runs `python -m sweeps.launch` as a user would, on real local Ray and real MLflow. Faults
of the machinery (a killed launcher or trial worker, a lost MLflow server) are the fault matrix's,
for every kind of sweep: tests/sweeps/test_fault_matrix.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV as CLUSTER_ENV
from tests.sweeps._sweep_harness import RayCluster

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
pytestmark = pytest.mark.slow

SPACE = """
name: {name}
description: fault-injection sweep
fixed:
  dataset: digits
  model: mlp
  batch_size: {batch}
  epochs: {epochs}
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.5, 2.5]
  lr: {lrs}
epsilon_budget: 20.0
search: grid
pruner: none
resources: {{cpus: 1, gpus: 0}}
confirm: off  # the confirmation stage is tested in test_launch_e2e, test_confirm and the fault matrix
"""


def _space(tmp_path: Path, name: str, *, epochs: int = 6, batch: int = 256, lrs: str = "[2.0]") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, epochs=epochs, batch=batch, lrs=lrs))
    return path


def _command(tmp_path: Path, space: Path, uri: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sweeps.launch",
        "--space",
        str(space),
        "--tracking-uri",
        uri,
        "--results-dir",
        str(tmp_path / "results"),
        *extra,
    ]


def _children(uri: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dpsweep")
    runs = client.search_runs([experiment.experiment_id])
    return client, [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path, ray_cluster: RayCluster) -> None:
    space = _space(tmp_path, "nan", epochs=3, batch=256, lrs="[2.0, 1.0e+30]")
    uri = empty_sqlite_store(tmp_path / "mlflow.db")
    done = subprocess.run(
        _command(tmp_path, space, uri, "--address", ray_cluster.address),
        cwd=tmp_path,
        env={**CLUSTER_ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _, children = _children(uri)
    by_lr = {float(c.data.params["lr"]): c for c in children}
    assert {by_lr[2.0].data.tags["dpsweep.outcome"]} == {"completed"}
    diverged = by_lr[1e30]
    assert diverged.data.tags["dpsweep.outcome"] == "failed" and diverged.info.status == "FAILED"
    assert "lower the learning rate" in diverged.data.tags["dpsweep.failure"]


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda s: s.replace("lr: [2.0]", "lr: fast"), "lr"),
        (lambda s: s.replace("lr: [2.0]", "lr: []"), "empty"),
        (lambda s: s.replace("lr: [2.0]", "lr: {low: 2.0, high: 0.5, num: 3}"), "low <= high"),
        (lambda s: s.replace("lr: [2.0]", "lr: [2.0\n  bad"), "line"),
        (lambda s: s.replace("  epochs: 6", "  epochs: 6\n  epoch: 3"), "epochs"),
        (lambda s: s.replace("noise_multiplier: [1.5, 2.5]", "noise_multiplier: [-1.0]"), "noise_multiplier"),
    ],
    ids=["wrong-type", "empty-grid", "low-above-high", "malformed-yaml", "unknown-key", "negative-sigma"],
)
def test_bad_space_exits_nonzero_before_creating_anything(tmp_path: Path, edit, needle: str) -> None:
    space = _space(tmp_path, "bad")
    space.write_text(edit(space.read_text()))
    done = subprocess.run(
        _command(tmp_path, space, f"sqlite:///{tmp_path}/mlflow.db"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr and str(space) in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()
