"""End to end: ``python -m sweeps.compare`` on two real tiny sweeps in one sqlite MLflow store."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.tracking import SweepTracker
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV, RayCluster

pytestmark = pytest.mark.slow

# Two lr axes, so that the two sweeps' frontiers differ; a cheap confirmation stage (no refit, no defaults).
SPACE = """
name: {name}
description: tiny sweep for sweeps.compare
fixed:
  dataset: digits
  model: mlp
  batch_size: 256
  epochs: 2
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.5, 3.0]
  lr: [{lr}]
epsilon_budget: 6.0
search: grid
pruner: none
resources: {{cpus: 2, gpus: 0}}
confirm: {{top: 1, seeds: 2, baseline: false, refit: false}}
"""


def _run(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory, _session_ray_cluster: RayCluster) -> tuple[Path, list]:
    """Two finished sweeps (their parent runs) in one sqlite store."""
    folder = tmp_path_factory.mktemp("compare")
    uri = empty_sqlite_store(folder / "mlflow.db")
    for name, lr in (("tiny_old", "0.05"), ("tiny_new", "2.0")):
        _session_ray_cluster.ensure_running()
        _session_ray_cluster.wait_idle()
        (folder / f"{name}.yaml").write_text(SPACE.format(name=name, lr=lr))
        done = _run(
            "sweeps.launch",
            "--space",
            str(folder / f"{name}.yaml"),
            "--address",
            _session_ray_cluster.address,
            "--tracking-uri",
            uri,
            "--results-dir",
            str(folder / "results"),
            cwd=folder,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(tracking_uri=uri)
    parents = client.search_runs(
        [client.get_experiment_by_name("dpsweep").experiment_id],
        filter_string="tags.`dpsweep.role` = 'sweep'",
        order_by=["attributes.start_time ASC"],
    )
    assert [p.info.run_name.split("-")[0] for p in parents] == ["tiny_old", "tiny_new"]
    return folder, parents


def test_compare_draws_both_confirmed_frontiers_and_logs_them_to_a_run_of_their_own(two_sweeps) -> None:
    folder, parents = two_sweeps
    uri = f"sqlite:///{folder}/mlflow.db"
    # One by name, one by run id.
    refs = [parents[0].info.run_name, parents[1].info.run_id]
    done = _run("sweeps.compare", *refs, "--tracking-uri", uri, "--out", str(folder / "cmp"), "--log", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "δ = 1e-05, RDP accountant" in done.stdout

    png, table = folder / "cmp" / "compare.png", folder / "cmp" / "compare.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    # Row for row what each parent run holds: every confirmed bound, its ε and test accuracy mean ± std.
    expected = set()
    for parent in parents:
        metrics = parent.data.metrics
        for key, mean in metrics.items():
            if key.startswith("confirmed_test_accuracy_mean.eps_le_"):
                bound = key.rsplit("eps_le_", 1)[1]
                expected.add(
                    (
                        parent.info.run_id,
                        parent.info.run_name,
                        bound,
                        metrics[f"confirmed_epsilon.eps_le_{bound}"],
                        mean,
                    )
                )
    assert expected and {p.info.run_id for p in parents} == {e[0] for e in expected}
    got = {(r["run_id"], r["sweep"], r["bound"], float(r["epsilon"]), float(r["test_accuracy_mean"])) for r in rows}
    assert got == expected
    assert {(r["delta"], r["accountant"]) for r in rows} == {("1e-05", "rdp")}

    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([parents[0].info.experiment_id], filter_string="tags.`dpsweep.role` = 'comparison'")
    assert logged.data.tags["dpsweep.compares"] == " ".join(p.info.run_id for p in parents)
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {"compare.png", "compare.csv"}
    assert logged.info.status == "FINISHED"


def test_compare_refuses_sweeps_of_another_accountant_and_unknown_names(two_sweeps) -> None:
    folder, parents = two_sweeps
    uri = f"sqlite:///{folder}/mlflow.db"
    # A third sweep's parent run, as a sweep logs it, but of the PRV accountant.
    tracker = SweepTracker(tracking_uri=uri, experiment="dpsweep")
    tracker.start_sweep(
        sweep_id="tiny_prv-20261207-000000",
        run_name="tiny_prv-20261207-000000",
        params={"space": "tiny_prv", "delta": 1e-5, "accountant": "prv", "epsilon_budget": 6.0},
        tags={},
    )
    tracker.log_sweep_metrics(
        {
            "confirmed_test_accuracy_mean.eps_le_3": 0.8,
            "confirmed_test_accuracy_std.eps_le_3": 0.01,
            "confirmed_epsilon.eps_le_3": 2.9,
        }
    )
    tracker.end_sweep()
    out = folder / "refused"
    done = _run(
        "sweeps.compare",
        parents[0].info.run_id,
        "tiny_prv-20261207-000000",
        "--tracking-uri",
        uri,
        "--out",
        str(out),
        cwd=folder,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: Expected sweeps whose ε share one δ and one accountant, but got ")
    assert "RDP accountant" in line and "PRV accountant" in line
    assert not out.exists()

    done = _run("sweeps.compare", "no_such_sweep-1", "--tracking-uri", uri, "--out", str(out), cwd=folder)
    assert done.returncode == 2 and "no sweep has that name" in done.stderr, done.stderr
