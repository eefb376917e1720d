"""Fixtures shared by the sweeps tests.

``ray_cluster`` is one local Ray head (``ray start``) for the whole session: a test that runs
``python -m sweeps.launch`` passes ``--address ray_cluster.address``
instead of letting each launcher start and stop a Ray of its own (seconds each time). Tests that are
about a Ray of their own (a launcher's local start, its environment, ``--num-cpus``) keep theirs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.workers.trial import HOLD_FILE_ENV
from tests.sweeps._sweep_harness import RayCluster


@pytest.fixture(scope="module")
def local_ray():
    """A one-CPU local Ray for the module (modules that need more slots define their own)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_holds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a test puts the file that holds a lone trial of a sweep on ``ray_cluster``
    (sweeps.workers.trial's hook): ``{trial}-epoch{epoch}`` in this folder."""
    return tmp_path_factory.mktemp("holds")


@pytest.fixture(scope="session")
def _session_ray_cluster(ray_holds: Path) -> Iterator[RayCluster]:
    # 2 CPUs: the slots of a 2-core machine, on any machine. The trial workers are the cluster's
    # processes: the hold hook's setting is the cluster's, not the launcher's.
    cluster = RayCluster(num_cpus=2, env={HOLD_FILE_ENV: str(ray_holds / "{trial}-epoch{epoch}")})
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def ray_cluster(_session_ray_cluster: RayCluster) -> RayCluster:
    """The session's Ray cluster, running and with no job of an earlier test left on it."""
    _session_ray_cluster.ensure_running()
    _session_ray_cluster.wait_idle()  # a test before may have left a dying job
    return _session_ray_cluster
