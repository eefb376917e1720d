"""Each sweeps sub-package declares its public surface, cheaply.

No module imports another's private names: tests/test_architecture.py checks that for all of them.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["driver", "planning", "privacy", "results", "space", "tracking", "workers"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_public_name_of_a_subpackage_resolves(name: str) -> None:
    package = importlib.import_module(f"sweeps.{name}")
    assert package.__all__, f"sweeps.{name} declares no public names"
    folder = Path(package.__file__).parent
    for public in package.__all__:
        if hasattr(package, public):
            continue
        # Not re-exported: a public module, imported by path.
        assert (folder / f"{public}.py").is_file(), f"sweeps.{name}.__all__ names {public!r}, which is nothing"
        assert not public.startswith("_")
    modules = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    assert modules <= set(package.__all__), (
        f"public modules missing from sweeps.{name}.__all__: {modules - set(package.__all__)}"
    )


def test_light_entry_points_stay_light() -> None:
    """Importing a package runs its __init__: the submit CLI and a trial actor's first import stay free of the stack."""
    code = (
        "import sys; import sweeps.driver.submit, sweeps.workers.trainable, sweeps.launch; "
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules]; "
        "print(heavy); raise SystemExit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
