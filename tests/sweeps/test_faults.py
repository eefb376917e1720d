"""Faults on the real stack: a dead trial worker, a killed launcher, an MLflow server that goes away.

Each test runs `python -m sweeps.launch` as a user would, on real local Ray and real MLflow, and
checks that nothing finished is lost, nothing is logged twice and no ε is misreported.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from dp_core import accounting

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
"""


def _space(tmp_path: Path, name: str, *, epochs: int = 6, batch: int = 256, lrs: str = "[2.0]") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, epochs=epochs, batch=batch, lrs=lrs))
    return path


def _command(tmp_path: Path, space: Path, uri: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweeps.launch", "--space", str(space), "--tracking-uri", uri,
            "--results-dir", str(tmp_path / "results"), *extra]


def _children(uri: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dpsweep")
    runs = client.search_runs([experiment.experiment_id])
    return client, [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]


def _wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _epochs_logged(uri: str, at_least: int) -> bool:
    try:
        client, children = _children(uri)
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return False
    return any(len(client.get_metric_history(c.info.run_id, "test_accuracy")) >= at_least for c in children)


def _kill_tree(process: psutil.Process) -> None:
    for child in process.children(recursive=True):
        child.kill()
    process.kill()


def _frontier_points(uri: str) -> set[tuple[str, int, float, float]]:
    client, children = _children(uri)
    points = set()
    for child in children:
        eps = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "epsilon")}
        for m in client.get_metric_history(child.info.run_id, "test_accuracy"):
            points.add((child.info.run_name, m.step, round(eps[m.step], 9), round(m.value, 9)))
    return points


def test_killed_trial_worker_is_retried_from_its_checkpoint_with_the_same_epsilon(tmp_path: Path) -> None:
    # One trial, small batches: epochs take long enough to kill the worker in the middle of one.
    space = _space(tmp_path, "workerkill", epochs=8, batch=16, lrs="[0.5]").read_text()
    space_path = tmp_path / "workerkill.yaml"
    space_path.write_text(space.replace("noise_multiplier: [1.5, 2.5]", "noise_multiplier: [1.5]"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    launcher = subprocess.Popen(_command(tmp_path, space_path, uri), cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _epochs_logged(uri, 1), timeout=240, what="the first epoch of the trial")
        workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                   if "ImplicitFunc" in " ".join(p.cmdline())]
        assert workers, "no Ray trial worker found under the launcher"
        for worker in workers:
            worker.kill()  # SIGKILL: the process dies mid-epoch, as on a preempted machine
        output, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            _kill_tree(psutil.Process(launcher.pid))
    assert launcher.returncode == 0, output

    client, children = _children(uri)
    assert len(children) == 1
    child = children[0]
    assert child.data.tags["dpsweep.outcome"] == "completed"
    steps = sorted({m.step for m in client.get_metric_history(child.info.run_id, "test_accuracy")})
    assert steps == list(range(1, 9))
    sample_rate = 16 / 1437
    expected = accounting.epsilon(noise_multiplier=1.5, sample_rate=sample_rate, steps=8 * int(1 / sample_rate),
                                  delta=1e-5, accountant="rdp")
    final = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "epsilon")}[8]
    assert final == pytest.approx(expected, rel=1e-9)  # the accountant history survived the restart
    errors = list((tmp_path / "results").rglob("error.txt"))
    assert errors, "Ray recorded no failure: the worker was not killed mid-trial"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_killed_launcher_resumes_to_the_uninterrupted_frontier(tmp_path: Path, sig: signal.Signals) -> None:
    space = _space(tmp_path, "killme", epochs=6, batch=64, lrs="[0.5, 2.0]")
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference_uri = f"sqlite:///{reference_dir}/mlflow.db"
    done = subprocess.run(_command(reference_dir, space, reference_uri), cwd=reference_dir, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    launcher = subprocess.Popen(_command(tmp_path, space, uri), cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree = psutil.Process(launcher.pid)
    try:
        _wait_for(lambda: _epochs_logged(uri, 3), timeout=240, what="a trial's third epoch")
        descendants = tree.children(recursive=True)
        launcher.send_signal(sig)
        launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            _kill_tree(tree)
    for process in descendants:  # a SIGKILLed driver leaves its local Ray processes behind
        if process.is_running():
            process.kill()

    resumed = subprocess.run(_command(tmp_path, space, uri, "--resume"), cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client, children = _children(uri)
    assert sorted(c.info.run_name for c in children) == [f"trial_000{i}" for i in range(4)]  # one run per trial
    assert all(c.info.status == "FINISHED" for c in children)  # none left RUNNING
    assert {c.data.tags["dpsweep.outcome"] for c in children} == {"completed"}
    assert _frontier_points(uri) == _frontier_points(reference_uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow_server(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/server.db",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def answers() -> bool:
        try:
            MlflowClient(tracking_uri=f"http://127.0.0.1:{port}").search_experiments()
            return True
        except Exception:  # noqa: BLE001
            return False

    _wait_for(answers, timeout=120, what="the MLflow server to answer")
    return server


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def test_mlflow_server_lost_mid_sweep_keeps_everything_and_syncs_later(tmp_path: Path) -> None:
    store = tmp_path / "server"
    store.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_mlflow_server(store, port)
    space = _space(tmp_path, "serverloss", epochs=8, batch=64, lrs="[0.5]")
    launcher = subprocess.Popen(_command(tmp_path, space, uri), cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _epochs_logged(uri, 2), timeout=240, what="two logged epochs")
        _stop(server)  # the tracking server dies mid-sweep
        output, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            _kill_tree(psutil.Process(launcher.pid))
    assert launcher.returncode == 3, output  # training finished, tracking not synced
    journal = next((tmp_path / "results").glob("*-mlflow-journal.jsonl"))
    assert f"python -m sweeps.sync {journal}" in output
    assert (tmp_path / "results" / journal.name.replace("-mlflow-journal.jsonl", "") / "frontier" / "frontier.csv").exists()

    server = _start_mlflow_server(store, port)
    try:
        synced = subprocess.run([sys.executable, "-m", "sweeps.sync", str(journal)], cwd=tmp_path, env=ENV,
                                capture_output=True, text=True, timeout=300)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert not journal.exists()
        client, children = _children(uri)
        assert sorted(c.info.run_name for c in children) == ["trial_0000", "trial_0001"]
        for child in children:
            assert child.data.tags["dpsweep.outcome"] == "completed" and child.info.status == "FINISHED"
            steps = sorted({m.step for m in client.get_metric_history(child.info.run_id, "test_accuracy")})
            assert steps == list(range(1, 9))
            assert all(math.isfinite(m.value) and m.value <= 20.0
                       for m in client.get_metric_history(child.info.run_id, "epsilon"))
        experiment = client.get_experiment_by_name("dpsweep")
        parent = [r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags.get("dpsweep.role") == "sweep"][0]
        assert parent.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"frontier.csv", "frontier.png"}
    finally:
        _stop(server)


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    space = _space(tmp_path, "nan", epochs=3, batch=256, lrs="[2.0, 1.0e+30]")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(_command(tmp_path, space, uri), cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=600)
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
    done = subprocess.run(_command(tmp_path, space, f"sqlite:///{tmp_path}/mlflow.db"), cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr and str(space) in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()
