"""Dataset facts: one torch-free leaf module that agrees with the data it describes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dp_core.data import load_dataset
from dp_core.dataset_facts import DATASETS, FILE_DATASETS, canonical_train_size

ROOT = Path(__file__).resolve().parents[2]


def test_the_leaf_module_imports_nothing_heavy() -> None:
    code = (
        "import sys; import dp_core.dataset_facts; "
        "heavy = [m for m in ('torch', 'numpy', 'opacus', 'sklearn', 'torchvision') if m in sys.modules]; "
        "print(heavy); raise SystemExit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["digits", "synthetic_mnist", "synthetic_cifar10"])
def test_facts_match_the_loaded_data(name: str) -> None:
    facts, data = DATASETS.get(name), load_dataset(name)
    assert data.input_shape == facts.input_shape and data.num_classes == facts.num_classes
    assert (len(data.train), len(data.test)) == (facts.train_size, facts.test_size)
    assert canonical_train_size(name) == facts.train_size


def test_file_datasets_are_the_torchvision_ones_and_sweeps_read_them_here() -> None:
    from sweeps.driver import prepare_data

    assert FILE_DATASETS == {"mnist", "fashion_mnist", "cifar10"}
    assert prepare_data.FILE_DATASETS is FILE_DATASETS
    assert all(DATASETS.get(name).normalisation is not None and DATASETS.get(name).folder for name in FILE_DATASETS)
