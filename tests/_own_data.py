"""Small own datasets written as a user would bring them: npz, CSV, an image folder, a Python loader.

Every one is cut from scikit-learn's digits (bundled: no download), small enough for a sweep of
seconds, and shared by the dp_core tests and the launcher's end-to-end tests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "assert_refused_before_anything",
    "digits_arrays",
    "write_csv",
    "write_image_folder",
    "write_loader",
    "write_npz",
]


def digits_arrays(train: int = 300, test: int = 100) -> dict[str, np.ndarray]:
    """Digits as N x 64 features in [0, 1] and labels 0..9: the first ``train`` and the next ``test`` examples."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)
    return {
        "x_train": x[:train],
        "y_train": y[:train],
        "x_test": x[train : train + test],
        "y_test": y[train : train + test],
    }


def write_npz(path: Path, **overrides: np.ndarray) -> Path:
    np.savez(path, **{**digits_arrays(), **overrides})
    return path


def write_csv(path: Path, *, rows: int = 400, label: str = "digit") -> Path:
    """One CSV of ``rows`` digits, 64 feature columns ``p0``..``p63`` and the label column."""
    import pandas as pd

    arrays = digits_arrays(train=rows, test=0)
    frame = pd.DataFrame(arrays["x_train"], columns=[f"p{i}" for i in range(64)])
    frame[label] = arrays["y_train"]
    frame.to_csv(path, index=False)
    return path


def write_image_folder(root: Path, *, per_class: int = 12, classes: int = 3) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: digits 0..classes-1 as 8 x 8 grey images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for label in range(classes):
        images = bunch.images[bunch.target == label]
        for part, chosen in (("train", images[:per_class]), ("test", images[per_class : per_class + per_class // 2])):
            folder = root / part / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(chosen):
                Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def write_loader(folder: Path, *, module: str = "my_data", body: str | None = None) -> str:
    """A module ``folder/module.py`` whose ``load()`` returns digits' splits; returns ``"module:load"``."""
    (folder / f"{module}.py").write_text(
        body
        or (
            "import numpy as np\n"
            "from sklearn.datasets import load_digits\n\n\n"
            "def load():\n"
            "    bunch = load_digits()\n"
            "    x, y = (bunch.data[:400] / 16.0).astype(np.float32), bunch.target[:400]\n"
            "    return {'x_train': x[:300], 'y_train': y[:300], 'x_test': x[300:], 'y_test': y[300:]}\n"
        )
    )
    return f"{module}:load"


def assert_refused_before_anything(space: dict[str, Any], tmp_path: Path, err_of: Any, expected: str) -> None:
    """``python -m sweeps.launch`` (its ``main``, in this process) on ``space`` exits 2 with one
    ``error:`` line matching ``expected`` that names the space file, and creates nothing: no MLflow
    store, no results folder, no Ray. ``err_of()`` returns the stderr written so far (capsys)."""
    import ray
    import yaml

    from sweeps.launch import main

    (tmp_path / "own.yaml").write_text(yaml.safe_dump(space))
    store, results = tmp_path / "mlflow.db", tmp_path / "results"
    code = main(
        ["--space", str(tmp_path / "own.yaml"), "--tracking-uri", f"sqlite:///{store}", "--results-dir", str(results)]
    )
    err = err_of()
    assert code == 2, err
    assert err.startswith("error: ") and re.search(expected, err), err
    assert str(tmp_path / "own.yaml") in err  # the message names the space file
    assert not store.exists() and not results.exists()
    assert not ray.is_initialized()
