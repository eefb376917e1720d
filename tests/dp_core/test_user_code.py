"""Tests for own models: dp_core.user_code imports ``module:function`` from code folders, and
dp_core.models builds, validates and refuses what the user's builder makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dp_core.config import TrainConfig
from dp_core.errors import ConfigError
from dp_core.models import build_model
from dp_core.user_code import import_from_code, on_import_path

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
import torch.nn as nn

def build(*, input_shape, num_classes, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), width), nn.ReLU(),
                         nn.Linear(width, num_classes))

def build_batchnorm(*, input_shape, num_classes):
    c = input_shape[0]
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * input_shape[1] * input_shape[2], num_classes))

def build_positional(input_shape, classes):
    return nn.Linear(1, classes)

def build_wrong_output(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), num_classes + 1))

def build_not_a_module(*, input_shape, num_classes):
    return "a string"

NOT_CALLABLE = 3
"""


def _module(folder: Path, source: str) -> str:
    """Write ``source`` as a module with a fresh name (sys.modules keeps each name once) in ``folder``."""
    name = f"own_{uuid.uuid4().hex[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_an_own_builder_gets_shape_classes_and_kwargs(tmp_path: Path) -> None:
    name = _module(tmp_path, GOOD)
    model = build_model(
        f"{name}:build", input_shape=(1, 8, 8), num_classes=7, model_kwargs={"width": 5}, code=[str(tmp_path)]
    )
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [5, 7]
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 7)
    flat = build_model(f"{name}:build", input_shape=(6,), num_classes=2, code=[str(tmp_path)])
    assert flat(torch.zeros(4, 6)).shape == (4, 2)  # feature vectors: input_shape (D,)
    assert str(tmp_path) not in sys.path  # the code folder was on the path only while importing and building


def test_the_code_folder_is_on_the_path_only_inside_the_block(tmp_path: Path) -> None:
    with on_import_path([str(tmp_path), str(tmp_path / "missing")]):
        assert sys.path[-1] == str(tmp_path)  # last: an installed or Ray-shipped copy comes first
        assert str(tmp_path / "missing") not in sys.path  # a folder that is not here is skipped
    assert str(tmp_path) not in sys.path


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("{name}_absent:build", "no module '{name}_absent' was found"),
        ("{name}:missing", "has no attribute 'missing'"),
        ("{name}:NOT_CALLABLE", "to name a function, but got a int"),
        ("{name}:build_positional", "refuses it"),
        ("{name}:build_wrong_output", "(2, 3) for a batch of 2, but got (2, 4)"),
        ("{name}:build_not_a_module", "to return a torch.nn.Module, but it returned a str"),
        ("not a reference:x", "'module:function'"),
    ],
)
def test_bad_own_builders_are_config_errors_that_say_why(tmp_path: Path, reference: str, expected: str) -> None:
    name = _module(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="Expected model") as caught:
        build_model(reference.format(name=name), input_shape=(1, 4, 4), num_classes=3, code=[str(tmp_path)])
    assert expected.format(name=name) in str(caught.value)


def test_a_module_that_raises_on_import_is_quoted(tmp_path: Path) -> None:
    name = _module(tmp_path, "raise RuntimeError('the module broke')\n")
    with pytest.raises(ConfigError, match="failed with RuntimeError: the module broke"):
        import_from_code(f"{name}:build", key="model", code=[str(tmp_path)])
    broken_dependency = _module(tmp_path, "import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError, match="ModuleNotFoundError: No module named 'no_such_dependency_xyz'"):
        import_from_code(f"{broken_dependency}:build", key="model", code=[str(tmp_path)])


def test_batchnorm_is_refused_naming_the_module_unless_fix_model_opts_in(tmp_path: Path) -> None:
    name = _module(tmp_path, GOOD)
    with pytest.raises(ConfigError) as caught:
        build_model(f"{name}:build_batchnorm", input_shape=(1, 4, 4), num_classes=3, code=[str(tmp_path)])
    message = str(caught.value)
    assert "1 (BatchNorm2d)" in message  # the offending module, by its name in the model
    assert "GroupNorm" in message and "fix_model: true" in message
    fixed = build_model(
        f"{name}:build_batchnorm", input_shape=(1, 4, 4), num_classes=3, fix_model=True, code=[str(tmp_path)]
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())


def test_zoo_models_refuse_kwargs_their_builder_does_not_take() -> None:
    with pytest.raises(ConfigError, match="unexpected keyword argument 'width'"):
        TrainConfig.from_dict({"model": "digits_cnn", "model_kwargs": {"width": 3}})
    with pytest.raises(ConfigError, match="Or name a builder of your own as 'module:function'"):
        TrainConfig.from_dict({"model": "nonet"})


def test_a_config_checks_its_own_builder_against_its_code_and_round_trips(tmp_path: Path) -> None:
    name = _module(tmp_path, GOOD)
    values = {"model": f"{name}:build", "model_kwargs": {"width": 4}, "code": [str(tmp_path)]}
    config = TrainConfig.from_dict(values)
    assert config.code == (str(tmp_path),)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="refuses it"):  # the signature is checked when the config is built
        TrainConfig.from_dict({**values, "model_kwargs": {"height": 4}})
    elsewhere = _module(tmp_path / "elsewhere", GOOD)  # a module of another folder than the config's code
    with pytest.raises(ConfigError, match=f"no module '{elsewhere}' was found"):
        TrainConfig.from_dict({**values, "model": f"{elsewhere}:build"})


def test_train_cli_trains_an_own_model_from_a_config_file_elsewhere(tmp_path: Path) -> None:
    code = tmp_path / "code"
    name = _module(code, GOOD)
    config = {
        "dataset": "digits",
        "model": f"{name}:build",
        "model_kwargs": {"width": 8},
        "code": [str(code)],
        "epochs": 1,
        "batch_size": 64,
        "target_epsilon": 4.0,
        "seed": 3,
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML: best_per_epsilon.json's form
    run = tmp_path / "run"
    run.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "dp_core.train", "--config", str(tmp_path / "config.yaml"), "--metrics-json", "m.json"],
        cwd=run,  # not the code folder: the module is found through the config's code
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "m.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epsilon"] <= 4.0


def test_the_train_cli_takes_model_kwargs_as_yaml_and_fix_model_as_a_switch() -> None:
    from dp_core.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--model", "tabular_mlp", "--model-kwargs", "{width: 12, depth: 1}", "--fix-model"]
    )
    config = config_from_args(args)
    assert config.model.model_kwargs == {"width": 12, "depth": 1} and config.model.fix_model
