"""The layering the folder tree promises: dp_core never imports the orchestration stack."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    command = shutil.which("lint-imports")
    assert command is not None, "import-linter is a test dependency: pip install -e '.[test]'"
    done = subprocess.run([command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_dp_core_runs_without_ray_optuna_mlflow() -> None:
    """Importing and planning with dp_core loads none of the orchestration libraries."""
    code = (
        "import sys; import dp_core.train, dp_core.plan, dp_core.cli; "
        "bad = [m for m in ('ray', 'optuna', 'mlflow', 'sweeps') if m in sys.modules]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_trial_workers_start_light() -> None:
    """Ray starts a trial's actor by importing its trainable's module: that must not pull in
    torch (seconds; see sweeps.workers.trainable), and the workers' training path never needs MLflow."""
    code = (
        "import sys; import sweeps.workers.trainable; "
        "heavy = [m for m in ('torch', 'opacus', 'mlflow', 'optuna') if m in sys.modules]; "
        "import sweeps.workers.trial, sweeps.workers.pack; "
        "heavy += [m for m in ('mlflow', 'optuna') if m in sys.modules]; "
        "print(heavy); raise SystemExit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
