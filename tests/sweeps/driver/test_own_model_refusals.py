"""A bad own model stops ``python -m sweeps.launch`` with exit 2 and a clear message, before Ray or MLflow start.

The launcher runs in this process (its ``main``), as a user's command line would run it: each case
proves that no MLflow store, no results folder and no Ray were created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._own_data import assert_refused_before_anything, write_npz

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")

BUILDERS = """
import math
import torch.nn as nn

def build(*, input_shape, num_classes, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, num_classes))

def positional(shape, classes):
    return nn.Linear(shape[0], classes)

def three_outputs(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 3))

def with_batchnorm(*, input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))
"""

# (model, extra axes, the module's source or None for BUILDERS, what the message says)
CASES = {
    "module fails to import": ("{m}:build", {}, "raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    "module missing": ("{m}_absent:build", {}, None, r"no module '\w+_absent' was found"),
    "function missing": ("{m}:absent", {}, None, "has no attribute 'absent'"),
    "wrong signature": ("{m}:positional", {}, None, r"signature \(shape, classes\) refuses it"),
    "a kwarg the builder refuses": ("{m}:build", {"model_kwargs.depth": [2]}, None, "unexpected keyword argument"),
    "output not the classes": ("{m}:three_outputs", {}, None, r"\(2, 10\) for a batch of 2, but got \(2, 3\)"),
    "BatchNorm": ("{m}:with_batchnorm", {}, None, r"1 \(BatchNorm1d\).*\n.*GroupNorm.*fix_model: true"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_own_model_exits_2_with_nothing_created(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:

    model, axes, source, expected = CASES[case]
    module = f"refused_model_{tmp_path.name}"  # its own name per test: a module imported once stays imported
    (tmp_path / f"{module}.py").write_text(source or BUILDERS)
    write_npz(tmp_path / "d.npz")
    space = {
        "name": "own",
        "fixed": {
            "dataset": {"format": "npz", "path": "d.npz", "classes": 10},
            "model": model.format(m=module),
            "batch_size": 32,
            "epochs": 1,
            "delta": 1.0e-3,
        },
        "axes": {"noise_multiplier": [1.0], **axes},
        "search": "grid",
        "confirm": "off",
    }
    assert_refused_before_anything(space, tmp_path, lambda: capsys.readouterr().err, expected)
