"""MLflow tracking of a sweep: one parent run, one child run per trial, the frontier on the parent.

This is the only package of dpsweep that talks to MLflow. Two properties make it safe for long
sweeps:

- Idempotent writes (:mod:`sweeps.tracking.writer`, :class:`SweepTracker`). Child runs are keyed
  by a hash of the trial's configuration and the parent by the sweep's name, so a resumed sweep,
  a retried trial or a replayed journal finds and continues its runs instead of creating duplicates.
- Nothing lost when the tracking server goes away (:mod:`sweeps.tracking.journal`). Writes MLflow
  cannot take go to a local journal while training goes on; it is replayed as soon as the server
  answers again, and ``python -m sweeps.sync JOURNAL`` replays whatever is left after the sweep.

Each ε bound's model is logged on its refit run and registered in MLflow's Model Registry
(:mod:`sweeps.tracking.model_registry`), idempotently and through the journal like every write.

Also here: telling MLflow's failures apart (:mod:`sweeps.tracking.errors`), the write-ahead log
for sqlite stores (:mod:`sweeps.tracking.sqlite`), the tags that make a sweep's runs findable
(:mod:`sweeps.tracking.tags`), the journal's replay command (:mod:`sweeps.tracking.sync`), and
sweeps read back by name for ``python -m sweeps.compare`` (:mod:`sweeps.tracking.sweep_runs`).

Credentials are MLflow's own (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, or
``MLFLOW_TRACKING_TOKEN``), read by MLflow's client from the environment: this package never
holds, logs or journals them, and refuses a tracking URI that carries them (it is printed and
journaled). A server that refuses the account stops the sweep at its first write.
"""

from sweeps.planning.keys import trial_key  # re-exported: callers identify runs by it
from sweeps.tracking.errors import TrackingRefused, TrackingUnavailable
from sweeps.tracking.writer import OUTCOMES, SweepTracker, default_tracking_uri

__all__ = [
    "OUTCOMES",
    "SweepTracker",
    "TrackingRefused",
    "TrackingUnavailable",
    "default_tracking_uri",
    "trial_key",
    "datasets",
    "errors",
    "journal",
    "model_registry",
    "sqlite",
    "sweep_runs",
    "sync",
    "tags",
    "writer",
]
