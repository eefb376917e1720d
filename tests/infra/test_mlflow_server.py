"""infra/mlflow/start_local.sh: a real PostgreSQL and a real MLflow server on loopback, with MLflow's
authentication on, and sweeps whose runs, metrics and artifacts land in them under an account.

PostgreSQL comes from the machine's Debian packages (infra/CI_SETUP.md has CI install them). If
it cannot be started, the test fails and says why: a tracking store that was never exercised is
not a pass. One server serves the whole module; each test signs in as the account it needs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.infra._infra_support import (
    ROOT,
    TrackingServer,
    account_env,
    files_containing,
    free_ports,
    kill_processes_mentioning,
    start_local,
    tracking_server,
)

pytestmark = pytest.mark.slow

SPACE = """
name: {name}
description: two trials tracked in PostgreSQL
seed: 0
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
resources: {{cpus: 1, gpus: 0}}
confirm: off  # the confirmation stage is tested in tests/sweeps
"""
SET_ACCOUNT = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    with tracking_server() as running:
        yield running


@pytest.fixture(scope="module")
def sweeper(server: TrackingServer) -> tuple[str, str]:
    """The account the sweeps sign in with: an ordinary user the admin added."""
    username = "sweeper-" + os.urandom(4).hex()
    return username, server.add_user(username)


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A private folder for the launcher's local Ray (RAY_TMPDIR), so its logs can be searched.

    Short, in /tmp: Ray's Unix sockets live below it, and their paths are limited to 107 bytes.
    """
    folder = Path(tempfile.mkdtemp(prefix="dpr-", dir="/tmp"))
    yield folder
    kill_processes_mentioning(str(folder))
    shutil.rmtree(folder, ignore_errors=True)


def _secrets_of(account: tuple[str, str]) -> list[str]:
    """What must never be written anywhere: the user name, the password, and the two as HTTP Basic sends them."""
    username, password = account
    return [username, password, base64.b64encode(f"{username}:{password}".encode()).decode()]


def _launch_command(space: Path, server: TrackingServer, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sweeps.launch",
        "--space",
        str(space),
        "--tracking-uri",
        server.tracking_uri,
        "--results-dir",
        str(results),
        *extra,
    ]


def _launch_env(account: tuple[str, str] | None, ray_tmp: Path | None = None) -> dict[str, str]:
    env = account_env(dict(os.environ), *(account or (None, None)))
    env["PYTHONPATH"] = str(ROOT)
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def _as_admin(server: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of the server signed in as its admin (MLflow's client reads the account from the environment)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
    return MlflowClient(tracking_uri=server.tracking_uri)


def _runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return (
        [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"],
        [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"],
    )


def _assert_logged_everything(client: MlflowClient, experiment: str) -> list:
    parents, children = _runs(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["trial_0000", "trial_0001"]
    assert {c.data.tags["dpsweep.outcome"] for c in children} == {"completed"}
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1, 2]
    return parents + children


def _params_and_tags(runs: list) -> str:
    return json.dumps([[r.data.params, r.data.tags] for r in runs])


# ---- the server --------------------------------------------------------------------------------


def test_start_local_serves_mlflow_on_postgres_over_loopback(server: TrackingServer) -> None:
    status = server.script("status", timeout=60)
    assert "MLflow server: running" in status.stdout and "server is running" in status.stdout, status.stdout
    # The server's store is PostgreSQL: its schema is there, written by MLflow's migrations.
    tables = {row[0] for row in server.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"experiments", "runs", "metrics", "params", "tags"} <= tables
    assert server.sql("SHOW listen_addresses") == [["127.0.0.1"]]
    # The accounts are in their own database, the admin among them; no password is kept in clear.
    assert [server.admin[0], "t"] in server.sql("SELECT username, is_admin FROM users", database="mlflow_auth")
    assert files_containing(server.home, [server.admin[1]]) == []


def test_start_local_needs_the_admin_account_from_the_environment() -> None:
    home = Path(tempfile.mkdtemp(prefix="dpsweep-mlflow-", dir="/tmp"))
    home.chmod(0o755)
    pg_port, mlflow_port = free_ports(2)
    env = {
        **account_env(dict(os.environ), None, None),
        "DPSWEEP_MLFLOW_HOME": str(home),
        "PG_PORT": str(pg_port),
        "MLFLOW_PORT": str(mlflow_port),
        "PYTHON": sys.executable,
    }
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        env.pop(name, None)
    try:
        nameless = start_local("start", env)
        assert nameless.returncode == 2 and "set MLFLOW_AUTH_ADMIN_USERNAME" in nameless.stderr, nameless.stderr
        assert not any(home.iterdir())  # nothing was created
        # A first start creates the admin account, so it needs the password too; there is no default.
        passwordless = start_local("start", {**env, "MLFLOW_AUTH_ADMIN_USERNAME": "admin"})
        assert passwordless.returncode == 2 and "set MLFLOW_AUTH_ADMIN_PASSWORD" in passwordless.stderr, (
            passwordless.stderr
        )
        assert "MLflow server: not running" in start_local("status", env, timeout=60).stdout
    finally:
        start_local("stop", env, timeout=120)
        kill_processes_mentioning(str(home))
        shutil.rmtree(home, ignore_errors=True)


def test_without_an_account_reads_writes_and_the_ui_get_401(server: TrackingServer) -> None:
    api = f"{server.tracking_uri}/api/2.0/mlflow"
    for auth in (None, (server.admin[0], "not-the-password")):
        assert (
            requests.get(f"{api}/experiments/search", params={"max_results": 1}, auth=auth, timeout=60).status_code
            == 401
        )
        assert (
            requests.post(f"{api}/experiments/create", json={"name": "anonymous"}, auth=auth, timeout=60).status_code
            == 401
        )
        assert requests.get(f"{server.tracking_uri}/", auth=auth, timeout=60).status_code == 401
    assert requests.get(f"{server.tracking_uri}/health", timeout=60).status_code == 200  # probes need no account


def test_a_user_with_read_permission_cannot_write(server: TrackingServer) -> None:
    api = f"{server.tracking_uri}/api/2.0/mlflow"
    created = requests.post(f"{api}/experiments/create", json={"name": "admins-sweeps"}, auth=server.admin, timeout=60)
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    run = requests.post(f"{api}/runs/create", json={"experiment_id": experiment_id}, auth=server.admin, timeout=60)
    run_id = run.json()["run"]["info"]["run_id"]
    reader = ("reader-" + os.urandom(4).hex(),)
    reader += (server.add_user(reader[0]),)

    # Every signed-in user reads every experiment (default_permission READ) ...
    read = requests.get(f"{api}/experiments/get", params={"experiment_id": experiment_id}, auth=reader, timeout=60)
    assert read.status_code == 200 and read.json()["experiment"]["name"] == "admins-sweeps"
    assert requests.get(f"{api}/runs/get", params={"run_id": run_id}, auth=reader, timeout=60).status_code == 200
    # ... and writes nothing there: no new run, no overwritten or deleted one, no renamed experiment.
    for endpoint, body in [
        ("runs/create", {"experiment_id": experiment_id}),
        ("runs/log-parameter", {"run_id": run_id, "key": "noise_multiplier", "value": "0"}),
        ("runs/delete", {"run_id": run_id}),
        ("experiments/update", {"experiment_id": experiment_id, "new_name": "taken"}),
    ]:
        reply = requests.post(f"{api}/{endpoint}", json=body, auth=reader, timeout=60)
        assert reply.status_code == 403, (endpoint, reply.status_code, reply.text)
    assert (
        requests.get(f"{api}/runs/get", params={"run_id": run_id}, auth=server.admin, timeout=60).json()["run"]["info"][
            "lifecycle_stage"
        ]
        == "active"
    )


# ---- sweeps against it --------------------------------------------------------------------------


def test_a_sweep_with_an_account_logs_everything_and_writes_no_credential(
    server: TrackingServer, sweeper: tuple[str, str], tmp_path: Path, ray_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = tmp_path / "pg_tiny.yaml"
    space.write_text(SPACE.format(name="pg_tiny"))
    results = tmp_path / "results"
    done = subprocess.run(
        _launch_command(space, server, results, "--experiment", "pg-e2e"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=_launch_env(sweeper, ray_tmp),
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # Through the server, as any user of the shared store sees it.
    client = _as_admin(server, monkeypatch)
    runs = _assert_logged_everything(client, "pg-e2e")
    # In PostgreSQL's own tables: every run, and every trial's per-epoch accuracy.
    rows = server.sql(
        "SELECT r.name, r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = 'pg-e2e' ORDER BY r.name"
    )
    assert sorted(name for name, _ in rows) == sorted(r.info.run_name for r in runs)
    assert {status for _, status in rows} == {"FINISHED"}
    epochs = server.sql(
        "SELECT r.name, count(DISTINCT m.step) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        "JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = 'pg-e2e' AND m.key = 'val_accuracy' GROUP BY r.name ORDER BY r.name"
    )
    assert epochs == [["trial_0000", "2"], ["trial_0001", "2"]]
    # The frontier files went through the server into its artifact store.
    stored = {p.name for p in (server.home / "artifacts").rglob("*") if p.is_file()}
    assert {"frontier.csv", "frontier.png", "best_per_epsilon.json"} <= stored, stored

    # The account is nowhere the sweep writes: console, MLflow params and tags, Ray Tune's state,
    # the artifact store, the local Ray's logs.
    needles = _secrets_of(sweeper)
    assert not [n for n in needles if n in done.stdout + done.stderr]
    assert not [n for n in needles if n in _params_and_tags(runs)]
    assert files_containing(results, needles) == []
    assert files_containing(server.home / "artifacts", needles) == []
    assert files_containing(ray_tmp, needles) == []


@pytest.mark.parametrize("password", [None, "not-the-password"], ids=["no account", "wrong password"])
def test_a_sweep_whose_account_is_refused_exits_2_before_starting_ray(
    server: TrackingServer, sweeper: tuple[str, str], tmp_path: Path, password: str | None
) -> None:
    space = tmp_path / "pg_refused.yaml"
    space.write_text(SPACE.format(name="pg_refused"))
    account = None if password is None else (sweeper[0], password)
    # A Ray address where nothing listens: had the launcher gone to Ray first, it would fail there instead.
    ray_address = f"127.0.0.1:{free_ports(1)[0]}"
    done = subprocess.run(
        _launch_command(space, server, tmp_path / "results", "--address", ray_address),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=_launch_env(account),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert SET_ACCOUNT in done.stderr and "HTTP 401" in done.stderr, done.stderr
    assert not (tmp_path / "results").exists()  # no sweep folder, no Ray Tune state: nothing ran
    assert not [n for n in _secrets_of(sweeper) if n in done.stdout + done.stderr]


def test_a_sweep_cut_off_from_mlflow_journals_no_credential_and_sync_replays_with_its_account(
    server: TrackingServer, sweeper: tuple[str, str], tmp_path: Path, ray_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = tmp_path / "pg_journal.yaml"
    space.write_text(SPACE.format(name="pg_journal"))
    results = tmp_path / "results"
    # No HTTP retries: a write to the stopped server goes to the journal at once.
    launcher = subprocess.Popen(
        _launch_command(space, server, results, "--experiment", "pg-journal"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_launch_env(sweeper, ray_tmp), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    try:
        # The parent run is open: freeze the launcher while its server goes away, so that every
        # later write (all trials, the frontier, the end of the sweep) finds it gone.
        seen = []
        for line in launcher.stdout:
            seen.append(line)
            if "parent run" in line:
                break
        assert seen and "parent run" in seen[-1], "".join(seen)
        launcher.send_signal(signal.SIGSTOP)
        stopped = server.script("stop", timeout=120)
        launcher.send_signal(signal.SIGCONT)
        assert stopped.returncode == 0, stopped.stderr
        output = "".join(seen) + launcher.communicate(timeout=600)[0]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        server.script("start")
    assert launcher.returncode == 3, output
    journal = results / next(p.name for p in results.glob("pg_journal-*-mlflow-journal.jsonl"))
    writes = [json.loads(line)["op"] for line in journal.read_text().splitlines()]
    assert writes[0] == "sweep" and "log_trial" in writes and writes[-1] == "end_sweep", writes
    needles = _secrets_of(sweeper)
    assert [n for n in needles if n in journal.read_text()] == []
    assert [n for n in needles if n in output] == []

    sync = [sys.executable, "-m", "sweeps.tracking.sync", str(journal)]
    refused = subprocess.run(
        sync,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=_launch_env((sweeper[0], "not-the-password")),
    )
    assert refused.returncode == 2 and SET_ACCOUNT in refused.stderr, refused.stdout + refused.stderr
    assert journal.exists()
    replayed = subprocess.run(sync, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_launch_env(sweeper))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert not journal.exists()
    runs = _assert_logged_everything(_as_admin(server, monkeypatch), "pg-journal")
    assert not [n for n in needles if n in _params_and_tags(runs) + replayed.stdout + replayed.stderr]
    assert files_containing(results, needles) == [] and files_containing(ray_tmp, needles) == []
