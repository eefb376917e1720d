"""Helpers for the infra tests: free loopback ports, ending only the processes a test started, and
the authenticated MLflow server of infra/mlflow/start_local.sh."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (held together, so never equal)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def kill_processes_mentioning(marker: str, *, timeout: float = 20.0) -> int:
    """Kill every process whose command line contains ``marker``, with all their descendants.

    Ray's daemons (GCS, raylet, dashboard, monitors) name their session folder on the command
    line, and workers are the raylet's children, so a private ``--temp-dir`` marks exactly one
    cluster's processes: unlike ``ray stop``, this leaves other Ray instances on the machine alone.
    """
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid != os.getpid() and any(marker in part for part in process.info["cmdline"] or ()):
                found[process.pid] = process
                found.update({child.pid: child for child in process.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for process in found.values():
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(found.values()), timeout=timeout)
    return len(found)


# ---- the MLflow server of infra/mlflow/start_local.sh: PostgreSQL, and MLflow's authentication ----

ROOT = Path(__file__).resolve().parents[2]
START_LOCAL = ROOT / "infra" / "mlflow" / "start_local.sh"


@dataclass(frozen=True)
class TrackingServer:
    """A running start_local.sh server; ``admin`` is its admin account (user, password)."""

    home: Path
    tracking_uri: str
    env: dict[str, str]  # what start_local.sh ran with (ports, home, the admin account)
    admin: tuple[str, str]

    def sql(self, query: str, *, database: str = "mlflow") -> list[list[str]]:
        """Ask PostgreSQL itself (not MLflow) through psql; rows of text fields."""
        psql = shutil.which("psql") or "psql"
        command = [
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            self.env["PG_PORT"],
            "-U",
            "mlflow",
            "-d",
            database,
            "-tA",
            "-F",
            "\t",
            "-c",
            query,
        ]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line.split("\t") for line in done.stdout.splitlines() if line]

    def script(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return start_local(command, self.env, timeout=timeout)

    def add_user(self, username: str) -> str:
        """Create an account through the auth app's REST API, as the admin; returns its password.

        A new account reads every experiment (default_permission READ) and writes only to the
        experiments it creates, or is granted EDIT on.
        """
        password = secrets.token_hex(16)
        reply = requests.post(
            f"{self.tracking_uri}/api/2.0/mlflow/users/create",
            auth=self.admin,
            timeout=60,
            json={"username": username, "password": password},
        )
        assert reply.status_code == 200, (reply.status_code, reply.text)
        return password


def start_local(command: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(START_LOCAL), command], env=env, capture_output=True, text=True, timeout=timeout)


def account_env(env: dict[str, str], username: str | None, password: str | None) -> dict[str, str]:
    """``env`` with MLflow's credential variables set to this account, or removed (None)."""
    clean = {
        k: v
        for k, v in env.items()
        if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    }
    if username is not None:
        clean.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password or "")
    return clean


@contextmanager
def tracking_server() -> Iterator[TrackingServer]:
    """infra/mlflow/start_local.sh on free loopback ports, with a fresh admin account; stopped after.

    The state folder is in /tmp, not pytest's tmp_path: as root the cluster runs as the
    `postgres` user, which cannot enter root's private pytest folders. Fails (never skips) when
    PostgreSQL is missing: a tracking store that was never exercised is not a pass.
    """
    home = Path(tempfile.mkdtemp(prefix="dpsweep-mlflow-", dir="/tmp"))
    home.chmod(0o755)
    pg_port, mlflow_port = free_ports(2)
    admin = (f"admin-{secrets.token_hex(4)}", secrets.token_hex(16))
    env = {
        **account_env(dict(os.environ), None, None),
        "DPSWEEP_MLFLOW_HOME": str(home),
        "PG_PORT": str(pg_port),
        "MLFLOW_PORT": str(mlflow_port),
        "PYTHON": sys.executable,
        "PGPASSFILE": str(home / "pgpass"),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
    }
    try:
        started = start_local("start", env)
        if started.returncode == 3:
            pytest.fail(
                f"PostgreSQL is not installed, so the MLflow server cannot be tested: {started.stderr.strip()} "
                "CI installs it with the lines in infra/CI_SETUP.md (apt-get install -y postgresql)."
            )
        if started.returncode != 0:
            pytest.fail(
                f"infra/mlflow/start_local.sh could not start PostgreSQL and MLflow (exit "
                f"{started.returncode}):\n{started.stdout}\n{started.stderr}"
            )
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in started.stdout, started.stdout
        yield TrackingServer(home=home, tracking_uri=f"http://127.0.0.1:{mlflow_port}", env=env, admin=admin)
    finally:
        start_local("stop", env, timeout=120)
        kill_processes_mentioning(str(home))  # anything stop left behind
        shutil.rmtree(home, ignore_errors=True)


def files_containing(folder: Path, needles: Iterable[str]) -> list[str]:
    """``path: needle`` for every file under ``folder`` whose bytes contain one of ``needles``."""
    wanted = [needle.encode() for needle in needles]
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {needle.decode()}" for needle in wanted if needle in data]
        except OSError:
            continue  # a socket, or a file removed while walking
    return found
