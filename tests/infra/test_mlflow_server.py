"""infra/mlflow/start_local.sh: a real PostgreSQL and a real MLflow server on loopback, and a sweep
whose runs, metrics and artifacts land in them.

PostgreSQL comes from the machine's Debian packages (infra/CI_SETUP.md has CI install them). If
it cannot be started, the test fails and says why: a tracking store that was never exercised is
not a pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _infra_support import free_ports, kill_processes_mentioning
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "mlflow" / "start_local.sh"
pytestmark = pytest.mark.slow

SPACE = """
name: pg_tiny
description: two trials tracked in PostgreSQL
fixed:
  dataset: digits
  model: mlp
  batch_size: 256
  epochs: 2
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.5, 2.0]
epsilon_budget: 50.0
search: grid
pruner: none
resources: {cpus: 1, gpus: 0}
"""


@dataclass(frozen=True)
class TrackingServer:
    home: Path
    tracking_uri: str
    env: dict[str, str]

    def sql(self, query: str) -> list[list[str]]:
        """Ask PostgreSQL itself (not MLflow) through psql; rows of text fields."""
        psql = shutil.which("psql") or "psql"
        command = [psql, "-h", "127.0.0.1", "-p", self.env["PG_PORT"], "-U", "mlflow", "-d", "mlflow", "-tA",
                   "-F", "\t", "-c", query]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line.split("\t") for line in done.stdout.splitlines() if line]


def _script(command: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    # In /tmp, not pytest's tmp_path: as root the cluster runs as the `postgres` user, which
    # cannot enter root's private pytest folders.
    home = Path(tempfile.mkdtemp(prefix="dpsweep-mlflow-", dir="/tmp"))
    home.chmod(0o755)
    pg_port, mlflow_port = free_ports(2)
    env = {**os.environ, "DPSWEEP_MLFLOW_HOME": str(home), "PG_PORT": str(pg_port), "MLFLOW_PORT": str(mlflow_port),
           "PYTHON": sys.executable, "PGPASSFILE": str(home / "pgpass")}
    try:
        started = _script("start", env)
        if started.returncode == 3:
            pytest.fail(f"PostgreSQL is not installed, so the MLflow server cannot be tested: {started.stderr.strip()} "
                        "CI installs it with the lines in infra/CI_SETUP.md (apt-get install -y postgresql).")
        if started.returncode != 0:
            pytest.fail(f"infra/mlflow/start_local.sh could not start PostgreSQL and MLflow (exit "
                        f"{started.returncode}):\n{started.stdout}\n{started.stderr}")
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in started.stdout, started.stdout
        yield TrackingServer(home=home, tracking_uri=f"http://127.0.0.1:{mlflow_port}", env=env)
    finally:
        _script("stop", env, timeout=120)
        kill_processes_mentioning(str(home))  # anything stop left behind
        shutil.rmtree(home, ignore_errors=True)


def test_start_local_serves_mlflow_on_postgres_over_loopback(server: TrackingServer) -> None:
    status = _script("status", server.env, timeout=60)
    assert "MLflow server: running" in status.stdout and "server is running" in status.stdout, status.stdout
    # The server's store is PostgreSQL: its schema is there, written by MLflow's migrations.
    tables = {row[0] for row in server.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"experiments", "runs", "metrics", "params", "tags"} <= tables
    assert server.sql("SHOW listen_addresses") == [["127.0.0.1"]]


def test_sweep_runs_metrics_and_artifacts_land_in_postgres_and_the_artifact_store(
        server: TrackingServer, tmp_path: Path) -> None:
    space = tmp_path / "pg_tiny.yaml"
    space.write_text(SPACE)
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.launch", "--space", str(space), "--tracking-uri", server.tracking_uri,
         "--results-dir", str(tmp_path / "results"), "--experiment", "pg-e2e"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # Through the server, as any user of the shared store sees it.
    client = MlflowClient(tracking_uri=server.tracking_uri)
    experiment = client.get_experiment_by_name("pg-e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["trial_0000", "trial_0001"]
    assert {c.data.tags["dpsweep.outcome"] for c in children} == {"completed"}

    # In PostgreSQL's own tables: every run, and every trial's per-epoch accuracy.
    rows = server.sql(
        "SELECT r.name, r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = 'pg-e2e' ORDER BY r.name")
    assert sorted(name for name, _ in rows) == sorted([parents[0].info.run_name, "trial_0000", "trial_0001"])
    assert {status for _, status in rows} == {"FINISHED"}
    epochs = server.sql(
        "SELECT r.name, count(DISTINCT m.step) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        "JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = 'pg-e2e' AND m.key = 'test_accuracy' GROUP BY r.name ORDER BY r.name")
    assert epochs == [["trial_0000", "2"], ["trial_0001", "2"]]

    # The frontier files went through the server into its artifact store.
    stored = {p.name for p in (server.home / "artifacts").rglob("*") if p.is_file()}
    assert {"frontier.csv", "frontier.png", "best_per_epsilon.json"} <= stored, stored
