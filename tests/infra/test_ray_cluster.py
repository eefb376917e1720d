"""A real two-node Ray cluster on this machine: a sweep submitted as a Ray Job, and one attached with
``sweeps.launch --address``, run their trials on the cluster's nodes and log every trial to MLflow.

The cluster is what ``ray start`` builds anywhere: a head and a worker node, each with its own
resources and its own temp folder (as on separate machines), token authentication on, the Job
API on loopback. Nodes on one machine share a filesystem, so a local absolute ``--results-dir``
is the "shared path" that Ray Tune needs on a multi-node cluster. The submitted sweep logs to the
authenticated MLflow server of infra/mlflow/start_local.sh, as the head's own MLflow account
(given to ``ray start --head`` in its environment, as a Kubernetes Secret gives it to the head
pod); the job carries no credential.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests._mlflow_store import empty_sqlite_store
from tests.infra._infra_support import (
    TrackingServer,
    account_env,
    files_containing,
    free_ports,
    kill_processes_mentioning,
    tracking_server,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# One CPU per node and one CPU per trial: the two trials can only run at the same time on
# different nodes. Trials last long enough (30 small-batch epochs) that both nodes' trial
# actors are up before either trial ends, so Tune's actor reuse cannot move the second trial
# onto the first node's actor. gpus: 0.5 requests half of a node's (logical) GPU: fractional
# GPUs are scheduled by Ray; without CUDA on this machine the trainer falls back to the CPU.
SPACE = """
name: {name}
description: two trials on a two-node cluster
fixed:
  dataset: digits
  model: mlp
  batch_size: 32
  epochs: {epochs}
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.5, 2.0]
epsilon_budget: 50.0
search: grid
pruner: none
resources: {{cpus: 1, gpus: 0.5}}
confirm: off  # the confirmation stage is tested in tests/sweeps
"""


@dataclass(frozen=True)
class LocalCluster:
    base: Path  # every process of this cluster names a folder under it
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]  # what a client of this cluster needs: the auth mode and token
    token: str
    mlflow: TrackingServer
    mlflow_account: tuple[str, str]  # the head's: its sweeps sign in with it

    def state(self, code: str) -> object:
        """Run ``code`` (which prints JSON) in a fresh Python with this cluster's credentials."""
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray is not None, "the `ray` command is missing: pip install -e '.[test]'"
    done = subprocess.run(
        [ray, "start", *args, "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"ray start {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[TrackingServer]:
    with tracking_server() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(mlflow_server: TrackingServer) -> Iterator[LocalCluster]:
    # Short: Ray's Unix sockets live below it, and their paths are limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="dpray-", dir="/tmp"))
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = account_env({k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}, None, None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(ROOT))
    account_name = "ray-head-" + secrets.token_hex(4)
    account = (account_name, mlflow_server.add_user(account_name))
    gcs, dashboard, client, head_agent, worker_agent = free_ports(5)
    node = [
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--num-gpus",
        "1",
        "--object-store-memory",
        str(100 * 1024**2),
    ]
    try:
        # Only the head has the MLflow account: its job drivers inherit it, trials never use it.
        _ray_start(
            [
                "--head",
                "--port",
                str(gcs),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard),
                "--ray-client-server-port",
                str(client),
                "--dashboard-agent-listen-port",
                str(head_agent),
                "--temp-dir",
                str(base / "head"),
                *node,
            ],
            account_env(env, *account),
        )
        _ray_start(
            [
                "--address",
                f"127.0.0.1:{gcs}",
                "--dashboard-agent-listen-port",
                str(worker_agent),
                "--temp-dir",
                str(base / "worker"),
                *node,
            ],
            env,
        )
        yield LocalCluster(
            base=base,
            gcs_address=f"127.0.0.1:{gcs}",
            dashboard_url=f"http://127.0.0.1:{dashboard}",
            env=env,
            token=token.read_text(),
            mlflow=mlflow_server,
            mlflow_account=account,
        )
    finally:
        kill_processes_mentioning(str(base))
        shutil.rmtree(base, ignore_errors=True)


NODES_AND_TRIAL_ACTORS = """
import json
from ray.util.state import list_actors, list_nodes
nodes = [{"node_id": n.node_id, "is_head": n.is_head_node} for n in list_nodes(address=%(url)r, detail=True)]
actors = [{"pid": a.pid, "node_id": a.node_id, "job_id": a.job_id, "resources": a.required_resources}
          for a in list_actors(address=%(url)r, filters=[("class_name", "=", "ImplicitFunc")], detail=True,
                               limit=10000)]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def _trial_pids(results: Path) -> dict[str, set[int]]:
    """Ray Tune's own per-trial results: which worker process (pid) reported each epoch."""
    pids = {}
    for result_file in results.glob("*/trial_*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        trial = re.match(r"(trial_\d+)_", result_file.parent.name).group(1)  # trial_0000_<tune id>
        pids[trial] = {row["pid"] for row in rows}
    return pids


def _trial_runs(tracking_uri: str, experiment: str = "dpsweep") -> tuple[MlflowClient, list, list]:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment.experiment_id])
    return (
        client,
        [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"],
        [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"],
    )


def _as_admin(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sign this process's MLflow client in as the server's admin (it reads the environment)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", cluster.mlflow.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cluster.mlflow.admin[1])


def test_the_job_api_answers_only_with_the_clusters_token(cluster: LocalCluster) -> None:
    jobs = f"{cluster.dashboard_url}/api/jobs/"
    assert requests.get(jobs, timeout=60).status_code == 401
    assert requests.post(jobs, json={"entrypoint": "echo anyone's code"}, timeout=60).status_code == 401
    assert requests.get(jobs, headers={"Authorization": "Bearer not-the-token"}, timeout=60).status_code == 403
    assert requests.get(jobs, headers={"Authorization": f"Bearer {cluster.token}"}, timeout=60).status_code == 200


def test_submitted_sweep_runs_its_trials_on_both_nodes_and_logs_every_trial(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = cluster.state(NODES_AND_TRIAL_ACTORS % {"url": cluster.dashboard_url})["nodes"]
    assert sorted(n["is_head"] for n in nodes) == [False, True], nodes
    space = tmp_path / "cluster_tiny.yaml"  # outside the project: submit ships it with the job
    space.write_text(SPACE.format(name="cluster_tiny", epochs=30))
    tracking_uri = cluster.mlflow.tracking_uri
    # The submitting shell has an MLflow account of its own: it must stay on this machine.
    own_account = ("laptop-" + secrets.token_hex(4), secrets.token_hex(16))

    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.driver.submit",
            "--space",
            str(space),
            "--address",
            cluster.dashboard_url,
            "--tracking-uri",
            tracking_uri,
            "--results-dir",
            str(tmp_path / "results"),
            "--experiment",
            "cluster-submit",
        ],
        cwd=tmp_path,
        env=account_env(cluster.env, *own_account),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "are not sent with the job" in done.stderr, done.stderr
    job_id = re.search(r"submitted job (\S+) to ", done.stdout).group(1)
    assert f"job {job_id}: SUCCEEDED" in done.stdout, log
    # The job's own output, streamed back while it ran: the sweep's progress lines and frontier.
    assert "trials 2/2: 2 done" in done.stdout and "Accuracy-vs-ε frontier" in done.stdout, log
    print(f"submitted sweep took {time.monotonic() - started:.0f} s")

    # It ran through the Job API with the launcher as entrypoint (what the dashboard recorded).
    job = cluster.state(
        "import json; from ray.job_submission import JobSubmissionClient; "
        f"info = JobSubmissionClient({cluster.dashboard_url!r}).get_job_info({job_id!r}); "
        "print(json.dumps({'status': str(info.status), 'entrypoint': info.entrypoint, "
        "'runtime_env': info.runtime_env, 'metadata': info.metadata}))"
    )
    assert job["status"] == "SUCCEEDED" and job["entrypoint"].startswith("python -m sweeps.launch --space "), job

    # Which node ran each trial: Tune's results name the worker process, Ray's state API the node
    # of every trial actor (ImplicitFunc) with its pid.
    state = cluster.state(NODES_AND_TRIAL_ACTORS % {"url": cluster.dashboard_url})
    node_of_pid = {a["pid"]: a["node_id"] for a in state["actors"]}
    pids = _trial_pids(tmp_path / "results")
    assert sorted(pids) == ["trial_0000", "trial_0001"], pids
    assert all(len(p) == 1 for p in pids.values()), pids  # one process per trial, never restarted
    trial_nodes = {name: node_of_pid[next(iter(p))] for name, p in pids.items()}
    assert set(trial_nodes.values()) == {n["node_id"] for n in state["nodes"]}, (trial_nodes, state["nodes"])

    # Each trial asked Ray for one CPU and half a GPU, as the space says.
    trial_pids = set().union(*pids.values())
    for actor in (a for a in state["actors"] if a["pid"] in trial_pids):
        # Tune places each trial in a placement group: CPU_group_0_<id>, GPU_group_0_<id>, ...
        granted = {key.split("_group_")[0]: value for key, value in actor["resources"].items() if "_group_0_" in key}
        assert granted.get("CPU") == 1.0 and granted.get("GPU") == 0.5, actor["resources"]

    # Every trial reached the MLflow store, every epoch of it: written with the head's account, the
    # only one there is (the submitting shell's is not an account of this server).
    _as_admin(cluster, monkeypatch)
    client, parents, children = _trial_runs(tracking_uri, "cluster-submit")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["trial_0000", "trial_0001"]
    for child in children:
        assert child.data.tags["dpsweep.outcome"] == "completed"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == list(range(1, 31)), (child.info.run_name, steps)

    # No password is in anything Ray keeps (both nodes' logs, the job's runtime environment and
    # info, the uploaded package) or the job's output, nor in Ray Tune's state.
    passwords = [cluster.mlflow_account[1], own_account[1]]
    assert files_containing(cluster.base, passwords) == []
    assert files_containing(tmp_path / "results", passwords) == []
    assert not [p for p in passwords if p in log + json.dumps(job)]


def test_a_submitted_sweep_the_heads_account_may_not_log_exits_2_before_any_trial(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    # An experiment of the admin's: every account reads it, only the admin writes to it.
    created = requests.post(
        f"{cluster.mlflow.tracking_uri}/api/2.0/mlflow/experiments/create",
        json={"name": "admins-only"},
        auth=cluster.mlflow.admin,
        timeout=60,
    )
    assert created.status_code == 200, created.text
    space = tmp_path / "cluster_refused.yaml"
    space.write_text(SPACE.format(name="cluster_refused", epochs=2))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.driver.submit",
            "--space",
            str(space),
            "--address",
            cluster.dashboard_url,
            "--tracking-uri",
            cluster.mlflow.tracking_uri,
            "--results-dir",
            str(tmp_path / "results"),
            "--experiment",
            "admins-only",
        ],
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    # The launcher's own message, streamed back from the head: what to set, and no secret.
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in done.stdout, done.stdout
    assert "HTTP 403" in done.stdout and cluster.mlflow_account[1] not in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()  # no sweep folder, no Ray Tune state: no trial ran


def test_launch_with_address_attaches_to_the_running_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    space = tmp_path / "attached_tiny.yaml"
    space.write_text(SPACE.format(name="attached_tiny", epochs=2))
    tracking_uri = empty_sqlite_store(tmp_path / "mlflow.db")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--address",
            cluster.gcs_address,
            "--tracking-uri",
            tracking_uri,
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # The trials ran as actors of this cluster (not of a private local Ray the launcher started).
    state = cluster.state(NODES_AND_TRIAL_ACTORS % {"url": cluster.dashboard_url})
    cluster_nodes = {n["node_id"] for n in state["nodes"]}
    node_of_pid = {a["pid"]: a["node_id"] for a in state["actors"]}
    pids = _trial_pids(tmp_path / "results")
    assert len(pids) == 2 and all(next(iter(p)) in node_of_pid for p in pids.values()), (pids, node_of_pid)
    assert {node_of_pid[next(iter(p))] for p in pids.values()} <= cluster_nodes

    client, parents, children = _trial_runs(tracking_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [c.data.tags["dpsweep.outcome"] for c in children] == ["completed", "completed"]


# An own model that is not installed anywhere: a module beside the space file, which notes each
# process that imports it and from where.
OWN_MODEL = """
import math
import os
import torch.nn as nn

with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}} {{__file__}}\\n")


def build(*, input_shape, num_classes, width=8):
    return nn.Sequential(nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, num_classes))
"""

OWN_SPACE = """
fixed:
  dataset: {{format: npz, path: digits.npz, classes: 10}}
  model: "cluster_own_net:build"
  batch_size: 32
  epochs: 30
  delta: 1.0e-3
  accountant: rdp
axes:
  noise_multiplier: [1.5]
  model_kwargs.width: [8, 16]
epsilon_budget: 50.0
search: grid
pruner: none
resources: {{cpus: 1, gpus: 0}}
confirm: off
"""


def test_a_submitted_sweep_of_own_npz_data_and_an_own_model_runs_on_both_nodes(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests._own_data import write_npz

    folder = tmp_path / "mine"  # outside the project, and on no node's import path
    folder.mkdir()
    write_npz(folder / "digits.npz")
    log = tmp_path / "imported_from.txt"
    (folder / "cluster_own_net.py").write_text(OWN_MODEL.format(log=str(log)))
    space = folder / "cluster_own.yaml"
    space.write_text(OWN_SPACE.format())
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.driver.submit", "--space", str(space), "--address", cluster.dashboard_url]
        + ["--tracking-uri", cluster.mlflow.tracking_uri, "--results-dir", str(tmp_path / "results")]
        + ["--experiment", "cluster-own", "--wait-for-resources", "0"],
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "trials 2/2: 2 done" in done.stdout, output

    _as_admin(cluster, monkeypatch)
    _, parents, children = _trial_runs(cluster.mlflow.tracking_uri, "cluster-own")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.params["axis.model_kwargs.width"] for c in children) == ["16", "8"]
    assert all(c.data.tags["dpsweep.outcome"] == "completed" for c in children)

    # The trials ran on both nodes, and the worker node imported the module from its own copy of
    # what Ray shipped (under its temp folder), not from the folder beside the space file.
    state = cluster.state(NODES_AND_TRIAL_ACTORS % {"url": cluster.dashboard_url})
    node_of_pid = {a["pid"]: a["node_id"] for a in state["actors"]}
    pids = _trial_pids(tmp_path / "results")
    assert {node_of_pid[next(iter(p))] for p in pids.values()} == {n["node_id"] for n in state["nodes"]}
    imports = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    worker_copies = [path for path in imports if path.startswith(str(cluster.base / "worker"))]
    assert worker_copies and all("py_modules_files" in path for path in worker_copies), imports
