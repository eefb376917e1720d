"""examples/own_model_images: its script makes the data, and the sweep it describes is ready to run
(the space loads, the own model builds for the data and Opacus accepts it, every trial is planned)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sweeps.driver.preparation import SweepRequest, prepare_sweep

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model_images"


def test_the_example_makes_its_data_and_its_sweep_is_ready(tmp_path: Path) -> None:
    folder = tmp_path / "own_model_images"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("digits.npz", "__pycache__"))
    done = subprocess.run([sys.executable, str(folder / "make_data.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with np.load(folder / "digits.npz") as arrays:
        assert arrays["x_train"].shape[1:] == (1, 8, 8) and arrays["x_train"].dtype == np.float32
        assert set(arrays) == {"x_train", "y_train", "x_test", "y_test"}

    prepared = prepare_sweep(SweepRequest(space=str(folder / "own_model_images.yaml"), results_dir=tmp_path / "r"))
    assert prepared.space.code == (str(folder.resolve()),)
    assert prepared.runtime_env is not None and str(folder / "mynet.py") in prepared.runtime_env["py_modules"]
    channels = {trial.axis_values["model_kwargs.channels"] for trial in prepared.runnable}
    assert len(prepared.runnable) == 8 and channels == {8, 16}
    assert not (tmp_path / "r").exists()  # preparing creates nothing
