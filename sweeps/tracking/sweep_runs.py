"""Sweeps read back from any tracking store by parent run id or name, and a comparison's own run.

``python -m sweeps.compare`` (:mod:`sweeps.results.compare` draws) reads each sweep's confirmed
frontier from its parent run here, and logs the comparison's PNG and CSV to a run of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from dp_core.config import ConfigError
from sweeps.results.compare import SweepFrontier
from sweeps.tracking.errors import TrackingRefused, check_uri, is_unreachable
from sweeps.tracking.writer import limit_http_retries

__all__ = ["log_comparison", "read_frontiers"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:+-]+$")


def _client(tracking_uri: str) -> MlflowClient:
    try:
        check_uri(tracking_uri)
    except TrackingRefused as error:
        raise ConfigError(str(error)) from None
    limit_http_retries()  # a dead server: seconds, not minutes of retries
    return MlflowClient(tracking_uri=tracking_uri)


def _sweep_run(client: MlflowClient, ref: str, *, tracking_uri: str) -> Any:
    """The parent run ``ref`` names: a run id, or a sweep's name (e.g. ``digits_quick-20261207-031500``)."""
    if _RUN_ID.match(ref):
        try:
            run = client.get_run(ref)
        except Exception as error:  # noqa: BLE001 - MLflow's "not found" differs by store
            if is_unreachable(error):
                raise ConfigError(f"Cannot reach MLflow at {tracking_uri}: {error}") from None
            run = None
        if run is not None:
            if run.data.tags.get("dpsweep.role") != "sweep":
                raise ConfigError(
                    f"Expected SWEEP to be a sweep's parent run, but got run {ref} (role "
                    f"{run.data.tags.get('dpsweep.role', 'none')!r}): pass the parent run's id or the sweep's name."
                )
            return run
    if not _NAME.match(ref):
        raise ConfigError(f"Expected SWEEP to be a parent run id or a sweep name, but got {ref!r}.")
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(
            experiments,
            filter_string=f"tags.`dpsweep.sweep_id` = '{ref}' and tags.`dpsweep.role` = 'sweep'",
            max_results=2,
        )
    except Exception as error:  # noqa: BLE001
        if is_unreachable(error):
            raise ConfigError(f"Cannot reach MLflow at {tracking_uri}: {error}") from None
        raise
    if len(found) != 1:
        how = "no sweep" if not found else "more than one sweep"
        raise ConfigError(
            f"Expected SWEEP to name one sweep at {tracking_uri}, but got {ref!r}: {how} has that name "
            "(a sweep's name is its parent run's, e.g. digits_quick-20261207-031500; or pass the run id)."
        )
    return found[0]


def read_frontiers(refs: Sequence[str], *, tracking_uri: str) -> list[SweepFrontier]:
    """Each named sweep's confirmed frontier, read from its parent run (ConfigError: none such, or no frontier)."""
    client = _client(tracking_uri)
    frontiers = []
    for ref in refs:
        run = _sweep_run(client, ref, tracking_uri=tracking_uri)
        frontiers.append(
            SweepFrontier.from_run(
                name=run.info.run_name or ref, run_id=run.info.run_id, params=run.data.params, metrics=run.data.metrics
            )
        )
    return frontiers


def log_comparison(
    files: Sequence[Path], frontiers: Sequence[SweepFrontier], *, tracking_uri: str, experiment: str | None = None
) -> str:
    """Log ``files`` to a new run (in ``experiment``, default the first sweep's) that names the
    sweeps it compares; returns its run id."""
    client = _client(tracking_uri)
    if experiment is None:
        experiment_id = client.get_run(frontiers[0].run_id).info.experiment_id
    else:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    first = frontiers[0]
    run = client.create_run(
        experiment_id,
        run_name="compare " + " vs ".join(f.name for f in frontiers),
        tags={
            "dpsweep.role": "comparison",
            "dpsweep.compares": " ".join(f.run_id for f in frontiers),
            "mlflow.note.content": "Confirmed frontiers of "
            + ", ".join(f"{f.name} (run {f.run_id})" for f in frontiers)
            + f"; every ε at δ = {first.delta:g}, {first.accountant.upper()} accountant.",
        },
    )
    client.log_param(run.info.run_id, "delta", first.delta)
    client.log_param(run.info.run_id, "accountant", first.accountant)
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
