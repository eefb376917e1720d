"""The sweep's privacy statement counts every run that touched the data, end to end on real Ray and MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.privacy.ledger import LEDGER_FILE, PrivacyLedger
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV, RayCluster

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

SPACE = """
name: {name}
description: privacy accounting end to end
fixed:
  dataset: digits
  model: mlp
  batch_size: 256
  epochs: 2
  delta: 1.0e-5
  accountant: rdp
axes:
{axes}
# Every trial here spends ε < 3 (σ >= 1.5, 2 epochs): a budget of 3 keeps the confirmation stage to
# four ε bounds (at 20 there were eight, each with its nominee's runs and refits).
epsilon_budget: 3.0
search: {search}
{extra}
pruner: none
resources: {{cpus: 1, gpus: 0}}
# a bound's best, twice, and its refit: the stage's runs are counted (the stage itself: test_confirm, test_launch_e2e)
confirm: {{top: 1, seeds: 2, baseline: false}}
"""


def _launch(
    tmp_path: Path, cluster: RayCluster, name: str, *extra_args: str, **fields: str
) -> tuple[subprocess.CompletedProcess, list]:
    space = tmp_path / f"{name}.yaml"
    space.write_text(SPACE.format(name=name, **fields))
    uri = empty_sqlite_store(tmp_path / "mlflow.db")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--tracking-uri",
            uri,
            "--results-dir",
            str(tmp_path / "results"),
            "--address",
            cluster.address,
            *extra_args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**ENV, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("dpsweep").experiment_id])
    return done, [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]


def _composed(output: str) -> int:
    return int(re.search(r"over the (\d+) trials? run", output).group(1))


def _ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(next((tmp_path / "results").glob(f"*/{LEDGER_FILE}")))


def test_an_audited_sweep_counts_the_audit_run(tmp_path: Path, ray_cluster: RayCluster) -> None:
    done, children = _launch(
        tmp_path, ray_cluster, "audited", "--audit", axes="  noise_multiplier: [1.5, 2.5]", search="grid", extra=""
    )
    entries = _ledger(tmp_path).entries()
    confirmations = [e for e in entries if e.role in ("confirmation", "refit")]
    assert {e.role for e in confirmations} == {"confirmation", "refit"}
    assert all(e.train_config and "seed" not in e.train_config for e in confirmations)
    assert sorted(e.role for e in entries if e not in confirmations) == ["audit", "trial", "trial"]
    assert {e.key for e in entries if e.role == "trial"} == {c.data.tags["dpsweep.trial_key"] for c in children}
    assert _composed(done.stdout) == len(entries)
    assert f"the confirmation stage's {len(confirmations)} runs and the audit's retraining among them" in done.stdout
    assert "fresh seed" in done.stdout


def test_a_diverged_optuna_trial_is_counted(tmp_path: Path, ray_cluster: RayCluster) -> None:
    done, children = _launch(
        tmp_path,
        ray_cluster,
        "diverging",
        axes="  lr: [1.0, 1.0e+30]\n  noise_multiplier: [1.5, 2.0]",
        search="optuna",
        extra="trials: 6\nvectorize: off",
    )
    failed = [c for c in children if c.data.tags["dpsweep.outcome"] == "failed"]
    assert failed, "lr = 1e30 diverges"
    trained = {
        c.data.tags["dpsweep.trial_key"] for c in children if c.data.tags["dpsweep.outcome"] != "skipped_over_budget"
    }
    entries = _ledger(tmp_path).entries()
    ledger_keys = {e.key for e in entries if e.role == "trial"}
    assert trained == ledger_keys and len(ledger_keys) == 6
    assert _composed(done.stdout) == len(entries)  # the confirmation runs counted too
