"""Bad own data stops ``python -m sweeps.launch`` with exit 2 and a clear message, before Ray or MLflow start.

The launcher runs in this process (its ``main``), as a user's command line would run it: each case
proves that no MLflow store, no results folder and no Ray were created.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests._own_data import assert_refused_before_anything, digits_arrays, write_csv, write_loader, write_npz

SPACE = {
    "name": "own",
    "fixed": {"model": "tabular_mlp", "batch_size": 32, "epochs": 1, "delta": 1.0e-3},
    "axes": {"noise_multiplier": [1.0]},
    "search": "grid",
    "confirm": "off",
}


def _npz(**overrides: np.ndarray) -> Callable[[Path], dict]:
    def make(folder: Path) -> dict:
        write_npz(folder / "d.npz", **overrides)
        return {"format": "npz", "path": "d.npz", "classes": 10}

    return make


def _with(array: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], dict]:
    return _npz(**{array: change(digits_arrays()[array].copy())})


def _nan(x: np.ndarray) -> np.ndarray:
    x[3, 4] = np.nan
    return x


def _inf(x: np.ndarray) -> np.ndarray:
    x[0, 0] = -np.inf
    return x


def _csv(label: str) -> Callable[[Path], dict]:
    def make(folder: Path) -> dict:
        write_csv(folder / "t.csv", rows=300)
        return {"format": "csv", "path": "t.csv", "label": label, "test_fraction": 0.2, "classes": 10}

    return make


def _float_target(folder: Path) -> dict:
    (folder / "f.csv").write_text("a,b,price\n" + "".join(f"{i},{i % 7},{i * 1.25}\n" for i in range(300)))
    return {"format": "csv", "path": "f.csv", "label": "price", "test_fraction": 0.2}


def _loader(body: str | None, function: str = "load") -> Callable[[Path], dict]:
    def make(folder: Path) -> dict:
        module = f"refused_loader_{folder.name}"  # its own name per test: a module imported once stays imported
        write_loader(folder, module=module, body=body)
        return {"format": "python", "loader": f"{module}:{function}"}

    return make


CASES = {
    "missing file": (lambda folder: {"format": "npz", "path": "nowhere.npz"}, "dataset.path to exist"),
    "wrong rank": (_with("x_train", lambda x: x.reshape(-1, 2, 4, 8)[:, :, :, :, None]), "rank 5"),
    "mismatched lengths": (_with("y_test", lambda y: y[:-1]), "100 examples and 99 labels"),
    "non-integer labels": (_with("y_train", lambda y: y + 0.25), "non-integer values"),
    "out-of-range labels": (_with("y_test", lambda y: np.where(y == 9, 10, y)), r"in \[0, 9\]"),
    "NaN features": (_with("x_train", _nan), "NaN or infinite"),
    "infinite features": (_with("x_test", _inf), "NaN or infinite"),
    "CSV without the label column": (_csv("label"), "label column dataset.label='label'"),
    "float target column": (_float_target, "The trainer is a classifier"),
    "loader fails to import": (_loader("raise RuntimeError('no database here')\n"), "RuntimeError: no database"),
    "loader lacks its function": (_loader(None, function="absent"), "it has no 'absent'"),
    "delta >= 1/N": (_npz(), r"delta to be < 1/N = 0.0037 \(N=270 training examples of d.npz\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_own_data_exits_2_with_nothing_created(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:

    make, expected = CASES[case]
    space = {**SPACE, "fixed": {**SPACE["fixed"], "dataset": make(tmp_path)}}
    if case == "delta >= 1/N":
        space["fixed"]["delta"] = 0.01  # 300 examples, 30 held out for validation: 1/N = 1/270
    assert_refused_before_anything(space, tmp_path, lambda: capsys.readouterr().err, expected)
