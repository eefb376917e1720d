"""The examples in the public API's docstrings run: load_space, the launcher's request, plot_frontier."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "sweeps.space.load",
    "sweeps.driver.preparation",
    "sweeps.results.frontier_plot",
    "sweeps.launch",
    "sweeps.results.compare",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
