"""Spaces with an own model: ``model: "module:function"``, its ``code`` folders and ``model_kwargs`` axes."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from dp_core.config import TrainConfig
from dp_core.errors import ConfigError
from sweeps.space import Range, load_space

BUILDER = """
import math
import torch.nn as nn

def build(*, input_shape, num_classes, width=8, depth=1):
    layers = [nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
"""

SPACE = """
fixed:
  dataset: digits
  model: "{module}:build"
  batch_size: 64
  epochs: 1
  delta: 1.0e-5
  {fixed_extra}
axes:
  noise_multiplier: [1.0]
  {axes_extra}
search: grid
{top_extra}
"""


def _module(folder: Path) -> str:
    name = f"space_net_{uuid.uuid4().hex[:10]}"  # fresh: sys.modules keeps a name once per process
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(BUILDER)
    return name


def _space(folder: Path, module: str, *, fixed_extra: str = "", axes_extra: str = "", top_extra: str = "") -> Path:
    path = folder / "own.yaml"
    text = SPACE.format(module=module, fixed_extra=fixed_extra, axes_extra=axes_extra, top_extra=top_extra)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_module_beside_the_space_file_is_its_code_and_every_trial_carries_it(tmp_path: Path) -> None:
    module = _module(tmp_path)
    space = load_space(_space(tmp_path, module, axes_extra="model_kwargs.width: [4, 16]"))
    assert space.code == (str(tmp_path.resolve()),)
    points = space.grid_points()
    assert [p["model_kwargs.width"] for p in points] == [4, 16]
    configs = [TrainConfig.from_dict(p) for p in points]
    assert [c.model.model_kwargs for c in configs] == [{"width": 4}, {"width": 16}]
    assert all(c.code == (str(tmp_path.resolve()),) for c in configs)


def test_a_model_kwargs_range_with_integer_ends_gives_integers(tmp_path: Path) -> None:
    module = _module(tmp_path)
    space = load_space(
        _space(
            tmp_path,
            module,
            fixed_extra="model_kwargs: {depth: 2}",
            axes_extra="model_kwargs.width: {low: 4, high: 32, log: true, num: 3}",
        )
    )
    axis = space.axes["model_kwargs.width"]
    assert isinstance(axis, Range) and axis.integer and axis.grid_values() == [4, 11, 32]
    config = TrainConfig.from_dict(space.grid_points()[1])
    assert config.model.model_kwargs == {"depth": 2, "width": 11}  # the axis' argument joins the fixed ones


def test_code_lists_folders_relative_to_the_space_file(tmp_path: Path) -> None:
    module = _module(tmp_path / "lib")
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    space = load_space(_space(spaces, module, top_extra="code: [../lib]"))
    assert space.code == (str((tmp_path / "lib").resolve()),)
    with pytest.raises(ConfigError, match=r"Expected code: to list folders, but got '../nowhere'"):
        load_space(_space(spaces, module, top_extra="code: [../nowhere]"))


@pytest.mark.parametrize(
    ("fixed_extra", "axes_extra", "message"),
    [
        ("code: [.]", "", "Expected code at the top level"),
        (
            "model_kwargs: {width: 4}",
            "model_kwargs.width: [8, 16]",
            "Key 'width' is in both fixed.model_kwargs",
        ),
        ("", "model_kwargs.2x: [8]", "Unknown key 'model_kwargs.2x'"),
    ],
)
def test_misplaced_code_and_model_kwargs_are_refused(
    tmp_path: Path, fixed_extra: str, axes_extra: str, message: str
) -> None:
    module = _module(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, module, fixed_extra=fixed_extra, axes_extra=axes_extra))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{module}_missing:build", "no module '{module}_missing' was found"),
        ("{module}:absent", "has no attribute 'absent'"),
    ],
)
def test_a_model_that_does_not_import_is_refused_naming_the_file(tmp_path: Path, model: str, message: str) -> None:
    module = _module(tmp_path)
    path = _space(tmp_path, module)
    path.write_text(path.read_text().replace(f"{module}:build", model.format(module=module)))
    with pytest.raises(ConfigError) as caught:
        load_space(path)
    assert message.format(module=module) in str(caught.value) and str(path) in str(caught.value)


def test_a_builder_that_refuses_an_axis_kwarg_is_refused_with_the_trial(tmp_path: Path) -> None:
    module = _module(tmp_path)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'height'.*First failing trial"):
        load_space(_space(tmp_path, module, axes_extra="model_kwargs.height: [3]"))


def test_a_zoo_space_has_no_code(tmp_path: Path) -> None:
    path = _space(tmp_path, "x")
    path.write_text(path.read_text().replace('"x:build"', "mlp"))
    space = load_space(path)
    assert space.code == () and "code" not in space.grid_points()[0]


def test_an_optuna_space_samples_a_model_kwarg_and_checks_its_extremes(tmp_path: Path) -> None:
    module = _module(tmp_path)
    path = _space(tmp_path, module, axes_extra="model_kwargs.depth: {low: 1, high: 3}", top_extra="trials: 4")
    path.write_text(path.read_text().replace("search: grid", "search: optuna"))
    space = load_space(path)
    axis = space.axes["model_kwargs.depth"]
    assert isinstance(axis, Range) and axis.integer  # Optuna suggests integers for it
    config = TrainConfig.from_dict(space.trial_config({"noise_multiplier": 1.0, "model_kwargs.depth": 3}))
    assert config.model.model_kwargs == {"depth": 3}
