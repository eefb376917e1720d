"""Fixtures shared by the sweeps tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A one-CPU local Ray for the module (modules that need more slots define their own)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
