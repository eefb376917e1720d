"""The two tiers: ``python -m pytest -q -m "not slow"`` for the edit loop, ``python -m pytest -q -n 2`` for CI.

A test is ``slow`` when it is marked so (``pytest.mark.slow``: a sweep through the launcher, a server
of its own, a unit test of many seconds), and also whenever it uses a fixture that starts a Ray
(:data:`RAY_FIXTURES`), so that a new test on Ray cannot land in the fast tier by forgetting the mark.
"""

from __future__ import annotations

import pytest

#: Fixtures that start a Ray or connect to the session's: a test using one is slow.
RAY_FIXTURES = frozenset({"local_ray", "ray_cluster", "_session_ray_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
