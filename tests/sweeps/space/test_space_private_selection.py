"""The ``private_selection:`` key of a search space: parsed, and refused where the theorem fails."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from dp_core.config import ConfigError
from sweeps.space import PrivateSelection, load_space

SPACE = """\
name: space
fixed:
  dataset: digits
  model: mlp
  epochs: 2
  delta: 1.0e-5
axes:
  noise_multiplier: [1.0, 2.0]
search: grid
{extra}
"""


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(extra=textwrap.dedent(extra)), encoding="utf-8")
    return path


def error(tmp_path: Path, extra: str) -> str:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_absent_means_none(tmp_path: Path) -> None:
    assert load_space(str(write(tmp_path, ""))).private_selection is None
    assert load_space("digits_quick").private_selection is None


def test_poisson_and_negative_binomial_parse(tmp_path: Path) -> None:
    space = load_space(str(write(tmp_path, "private_selection: {distribution: poisson, mean: 10}")))
    assert space.private_selection == PrivateSelection(distribution="poisson", mean=10.0, eta=None)
    space = load_space(str(write(tmp_path, "private_selection: {distribution: truncated_negative_binomial, mean: 5}")))
    assert space.private_selection == PrivateSelection(distribution="truncated_negative_binomial", mean=5.0, eta=1.0)
    space = load_space(
        str(
            write(
                tmp_path,
                """\
        private_selection:
          distribution: truncated_negative_binomial
          mean: 1.2e1
          eta: 0
        """,
            )
        )
    )
    assert space.private_selection == PrivateSelection(distribution="truncated_negative_binomial", mean=12.0, eta=0.0)
    assert pickle.loads(pickle.dumps(space)) == space  # Ray ships the space to workers


def test_bad_values_name_the_key_and_value(tmp_path: Path) -> None:
    message = error(tmp_path, "private_selection: {distribution: geometric, mean: 10}")
    assert "private_selection.distribution" in message and "'geometric'" in message and "poisson" in message
    message = error(tmp_path, "private_selection: {distribution: poisson, mean: 0.5}")
    assert "private_selection.mean=0.5" in message and ">= 1" in message
    message = error(tmp_path, "private_selection: {distribution: poisson, mean: 10, eta: 1}")
    assert "private_selection.eta=1" in message and "absent for distribution: poisson" in message
    message = error(tmp_path, "private_selection: {distribution: truncated_negative_binomial, mean: 10, eta: -1}")
    assert "private_selection.eta=-1" in message
    message = error(tmp_path, "private_selection: {distribution: poisson, mean: 10, shape: 1}")
    assert "'shape'" in message and "eta" in message
    message = error(tmp_path, "private_selection: {distribution: poisson}")
    assert "Missing 'mean'" in message
    message = error(tmp_path, "private_selection: poisson")
    assert "to be a mapping" in message


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("pruner: asha", "pruner"),
        ("trials: 2", "trials"),
    ],
)
def test_settings_that_break_independent_runs_are_refused(tmp_path: Path, extra: str, key: str) -> None:
    message = error(tmp_path, f"private_selection: {{distribution: poisson, mean: 10}}\n{extra}")
    assert f"Expected {key} to be" in message and "with private_selection" in message


def test_optuna_is_refused_even_from_the_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        private_selection: {distribution: poisson, mean: 10}
        """,
    )
    space = load_space(str(path))
    with pytest.raises(ConfigError) as info:
        space.with_overrides(search="optuna", trials=5)
    message = str(info.value)
    assert "Expected search to be grid" in message and "not independent" in message
    with pytest.raises(ConfigError, match=r"Expected trials to be absent .*overridden from the command line"):
        space.with_overrides(trials=5)


def test_a_seed_axis_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        SPACE.format(extra="private_selection: {distribution: poisson, mean: 10}").replace(
            "  noise_multiplier: [1.0, 2.0]\n", "  noise_multiplier: [1.0, 2.0]\n  seed: [0, 1]\n"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="Expected no seed axis with private_selection"):
        load_space(str(path))
