"""The headline spaces through the real launcher, on CPU: ``cifar10_grid`` and ``mnist_grid``.

The shipped files, with only what CPU time forces changed: the dataset is the synthetic stand-in
(dp_core.synthetic: the real shapes, no download), the axes are cut to two points, the epochs to
two, the per-trial resources overridden on the command line. Everything else is the shipped
space's: resnet18_gn and cifar_cnn (cifar10_grid), mnist_cnn (mnist_grid), SGD with momentum, the
cos schedule, δ, the PRV accountant, ASHA, and virtual batches (cifar10_grid: logical batches of
64 in physical batches of 16). Real local Ray, real sqlite MLflow, real Opacus.

And what a new user meets: ``python -m sweeps.launch --space cifar10_grid`` on a machine without a
GPU exits 2 with the fix, and a dataset that cannot be fetched is one error before anything runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.sweeps._sweep_harness import ENV, ROOT, RayCluster

pytestmark = pytest.mark.slow


def _derived_space(tmp_path: Path, shipped: str, *, fixed: dict[str, Any], axes: dict[str, list[Any]]) -> Path:
    """The shipped space ``shipped`` with ``fixed`` keys replaced and ``axes`` cut down, as a file
    of the same name (a space's name must equal its file's stem)."""
    space = yaml.safe_load((ROOT / "search_spaces" / f"{shipped}.yaml").read_text())
    space["fixed"].update(fixed)
    space["axes"] = axes
    space["confirm"] = "off"  # retraining the best with fresh seeds is tested elsewhere; here it would triple the time
    path = tmp_path / f"{shipped}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _launch(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            *args,
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env or ENV,
        check=False,
    )


def _trial_runs(tmp_path: Path) -> tuple[MlflowClient, Any, list[Any]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dpsweep").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"]
    return client, parent, [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]


def _check_trials(tmp_path: Path, *, dataset: str, models: set[str], epochs: int, expected: dict[str, str]) -> None:
    client, parent, trials = _trial_runs(tmp_path)
    assert parent.data.params["fixed.download"] == "False"  # the trials were told not to download
    assert len(trials) == 2
    outcomes = []
    for run in trials:
        params = run.data.params
        outcomes.append(run.data.tags["dpsweep.outcome"])
        assert params["dataset"] == dataset and params["download"] == "False"
        assert {k: params[k] for k in expected} == expected
        epsilons = client.get_metric_history(run.info.run_id, "epsilon")
        # The shipped pruner (ASHA) may stop the trial behind at the first rung, after its first epoch.
        assert len(epsilons) == (epochs if outcomes[-1] == "completed" else 1), outcomes[-1]
        assert 0 < epsilons[-1].value < float(parent.data.params["epsilon_budget"])
    assert "completed" in outcomes and set(outcomes) <= {"completed", "pruned"}, outcomes
    assert {run.data.params["model"] for run in trials} == models


def test_cifar10_grid_on_cpu_with_the_synthetic_stand_in(tmp_path: Path, ray_cluster: RayCluster) -> None:
    space = _derived_space(
        tmp_path,
        "cifar10_grid",
        fixed={"dataset": "synthetic_cifar10", "epochs": 2, "max_physical_batch_size": 16},
        axes={
            "model": ["resnet18_gn", "cifar_cnn"],
            "batch_size": [64],
            "max_grad_norm": [1.0],
            "noise_multiplier": [1.5],
            "lr": [0.1],
        },
    )
    done = _launch(tmp_path, "--space", str(space), "--resources", "cpus=2,gpus=0", "--address", ray_cluster.address)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trial-epochs/s" in done.stdout
    _check_trials(
        tmp_path,
        dataset="synthetic_cifar10",
        models={"resnet18_gn", "cifar_cnn"},
        epochs=2,
        expected={
            "lr_schedule": "cos",
            "optimizer": "sgd",
            "momentum": "0.9",
            "batch_size": "64",
            "max_physical_batch_size": "16",
            "gn_groups": "8",
            "accountant": "prv",
        },
    )


def test_mnist_grid_on_cpu_with_the_synthetic_stand_in(tmp_path: Path, ray_cluster: RayCluster) -> None:
    space = _derived_space(
        tmp_path,
        "mnist_grid",
        fixed={"dataset": "synthetic_mnist", "epochs": 2},
        axes={"max_grad_norm": [1.0], "noise_multiplier": [0.8, 1.5], "lr": [0.15]},
    )
    # The space's 2 CPUs, no GPU, on the session's cluster of 2 CPUs.
    done = _launch(tmp_path, "--space", str(space), "--resources", "gpus=0", "--address", ray_cluster.address)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check_trials(
        tmp_path,
        dataset="synthetic_mnist",
        models={"mnist_cnn"},
        epochs=2,
        expected={"momentum": "0.5", "batch_size": "64", "accountant": "prv"},
    )


@pytest.mark.skipif(
    os.cpu_count() >= 4 and __import__("torch").cuda.is_available(),
    reason="this machine can hold a cifar10_grid trial (4 CPUs, half a GPU)",
)
def test_cifar10_grid_as_shipped_exits_2_with_the_fix_on_a_machine_without_a_gpu(tmp_path: Path) -> None:
    ray_files = tmp_path / "ray"  # where local Ray would keep its session, had it started
    done = _launch(tmp_path, "--space", "cifar10_grid", env={**ENV, "RAY_TMPDIR": str(ray_files)})
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 CPUs and 0.5 GPUs" in done.stderr and "no trial could ever start" in done.stderr
    assert "--resources cpus=" in done.stderr and "--address" in done.stderr
    # Nothing created: no MLflow store, no sweep folder, no download; decided before Ray started.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()
    assert not ray_files.exists()


def test_a_dataset_that_cannot_be_fetched_is_one_error_before_anything_runs(tmp_path: Path) -> None:
    space = _derived_space(
        tmp_path,
        "mnist_grid",
        fixed={"epochs": 1},
        axes={"max_grad_norm": [1.0], "noise_multiplier": [1.1], "lr": [0.15]},
    )  # dataset: mnist, download: true
    offline = {
        **ENV,
        "DPSWEEP_DATA": str(tmp_path / "data"),
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    done = _launch(tmp_path, "--space", str(space), "--resources", "gpus=0", env=offline)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.count("Could not fetch dataset 'mnist'") == 1 and "Without network access" in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_cifar10_sota_end_to_end_at_tiny_scale_on_synthetic_images(tmp_path: Path, ray_cluster: RayCluster) -> None:
    """The shipped recipe's keys (wrn with weight standardisation and GroupNorm(16), augmult with flips,
    EMA, C = 1, no momentum, a target ε) through the launcher, on 192 CIFAR-shaped synthetic images in
    an npz file: the model cut to WRN-10-1, augmult to 2, one epoch; EMA off and on as an axis, and the
    confirmation stage and refit on (two seeds) so that they carry it too."""
    import numpy as np

    from dp_core.synthetic import synthetic_tensors

    x_train, y_train = synthetic_tensors("synthetic_cifar10", split="train")
    x_test, y_test = synthetic_tensors("synthetic_cifar10", split="test")
    np.savez(
        tmp_path / "tiny.npz",
        x_train=x_train[:192].numpy(),
        y_train=y_train[:192].numpy(),
        x_test=x_test[:64].numpy(),
        y_test=y_test[:64].numpy(),
    )
    dataset = {"format": "npz", "path": "tiny.npz", "classes": 10, "horizontal_flip": True, "name": "tiny_cifar"}
    space = _derived_space(
        tmp_path,
        "cifar10_sota",
        fixed={
            "dataset": dataset,
            "download": False,
            "model_kwargs": {"depth": 10, "width": 1},
            "batch_size": 32,
            "max_physical_batch_size": 16,
            "augmult": 2,
        },
        axes={"ema_decay": [None, 0.999999], "target_epsilon": [8.0], "lr": [2.0], "epochs": [1]},
    )
    spec = yaml.safe_load(space.read_text())
    assert spec["fixed"].pop("ema_decay") == 0.999999  # the shipped value, swept here against off
    spec["confirm"] = {"top": 1, "seeds": 2}
    space.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = _launch(tmp_path, "--space", str(space), "--resources", "cpus=2,gpus=0", "--address", ray_cluster.address)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client, parent, trials = _trial_runs(tmp_path)
    assert len(trials) == 2
    for run in trials:
        params = run.data.params
        assert run.data.tags["dpsweep.outcome"] == "completed"
        assert {k: params[k] for k in ("model", "gn_groups", "augmult", "momentum", "max_grad_norm")} == {
            "model": "wrn",
            "gn_groups": "16",
            "augmult": "2",
            "momentum": "0.0",
            "max_grad_norm": "1.0",
        }
        (epsilon,) = client.get_metric_history(run.info.run_id, "epsilon")
        assert 0 < epsilon.value <= 8.0 + 1e-9
        # With EMA on, the last iterate's accuracy is logged beside the averaged model's; off, it is not.
        raw = client.get_metric_history(run.info.run_id, "val_accuracy_raw")
        assert bool(raw) == (params["ema_decay"] == "0.999999"), params["ema_decay"]
    assert sorted(r.data.params["ema_decay"] for r in trials) == ["0.999999", "None"]
    # The confirmation stage and the refit retrained the chosen configuration with its ema_decay.
    experiment = client.get_experiment_by_name("dpsweep").experiment_id
    roles = {}
    for run in client.search_runs([experiment]):
        roles.setdefault(run.data.tags.get("dpsweep.role"), []).append(run)
    chosen = {r.data.params.get("ema_decay") for r in roles.get("refit", [])}
    assert roles.get("confirmation") and len(chosen) == 1, sorted(roles)
    (ema,) = chosen
    refit = roles["refit"][0]
    assert ("test_accuracy_raw" in refit.data.metrics) == (ema == "0.999999"), (ema, refit.data.metrics)
