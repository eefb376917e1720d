"""The examples in dp_core's docstrings run and show what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "dp_core.registry",
    "dp_core.train",
    "dp_core.dpsgd",
    "dp_core.noise",
    "dp_core.dataset_spec",
    "dp_core.own_data",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no example to run"
    assert result.failed == 0
