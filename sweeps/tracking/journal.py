"""The offline journal: MLflow writes kept while the tracking server is away, replayed later.

If a write fails because MLflow cannot be reached, that write and every later one (to keep their
order) are appended to a local journal (JSON lines, next to Ray's trial state) while training
goes on; the journal is replayed as soon as the server answers again, and ``python -m
sweeps.sync JOURNAL`` (:meth:`JournaledWrites.replay`) replays whatever is left after the sweep.
Replays are idempotent: runs are found again by their keys (see :mod:`sweeps.tracking.writer`).
The journal holds no credentials.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from sweeps.tracking.errors import TrackingUnavailable, check_uri, is_unreachable, refusal

__all__ = ["JournaledWrites", "JOURNALED"]

#: Writes that may be journaled and replayed, in the order they were made.
JOURNALED = (
    "log_trial",
    "log_skipped",
    "log_sweep_metrics",
    "log_sweep_tags",
    "log_artifact",
    "end_sweep",
    "tag_runs",
    "register_model",
    "log_dataset",
)


class JournaledWrites:
    """The journaling half of :class:`sweeps.tracking.writer.SweepTracker`: ``_write(op, **kwargs)``
    applies the tracker's ``_<op>(**kwargs)`` now, or journals it while MLflow is away.

    The tracker provides ``tracking_uri``, ``experiment``, ``sweep_arguments`` (start_sweep's arguments),
    ``parent_run_id`` and ``_open_parent``, and a ``_<op>`` method for every op in JOURNALED.
    """

    def _init_journal(self, journal: str | os.PathLike | None) -> None:
        self.journal = Path(journal) if journal is not None else None
        self._offline = False
        self._last_retry = 0.0

    @property
    def offline(self) -> bool:
        """True while writes go to the journal because MLflow could not be reached."""
        return self._offline

    def read_or(self, read: Any, fallback: Any) -> Any:
        """``read()`` from MLflow, or ``fallback()`` when it cannot be reached (then later writes go
        to the journal, as when a write fails)."""
        if not self._offline:
            try:
                return read()
            except Exception as error:  # noqa: BLE001 - re-raised unless it means "unreachable"
                if not is_unreachable(error) or self.journal is None:
                    raise
                self._offline = True
                self._last_retry = time.monotonic()
        return fallback()

    def _write(self, op: str, **kwargs: Any) -> None:
        """Apply a write now, or journal it (and every later one, to keep order) if MLflow is away."""
        with self._locked():
            self._write_unlocked(op, **kwargs)

    def _locked(self) -> threading.RLock:
        # Writes come from the driver's main thread and from the background logging thread.
        if self.__dict__.get("_lock") is None:
            self._lock = threading.RLock()
        return self._lock

    def _write_unlocked(self, op: str, **kwargs: Any) -> None:
        if self._offline:
            self._append(op, kwargs)
            if time.monotonic() - self._last_retry > 30:
                self._flush_unlocked()
            return
        try:
            getattr(self, f"_{op}")(**kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised unless it means "unreachable"
            if not is_unreachable(error) or self.journal is None:
                raise
            self._offline = True
            self._last_retry = time.monotonic()
            self._append(op, kwargs)

    def _append(self, op: str, kwargs: dict[str, Any]) -> None:
        assert self.journal is not None
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a") as handle:
            if handle.tell() == 0:
                handle.write(
                    json.dumps(
                        {
                            "op": "sweep",
                            "kwargs": {
                                "tracking_uri": self.tracking_uri,
                                "experiment": self.experiment,
                                **(self.sweep_arguments or {}),
                            },
                        }
                    )
                    + "\n"
                )
            handle.write(json.dumps({"op": op, "kwargs": kwargs}, default=str) + "\n")

    def flush(self) -> int:
        """Replay the journal if MLflow answers again; returns how many writes were replayed."""
        with self._locked():
            return self._flush_unlocked()

    def _flush_unlocked(self) -> int:
        self._last_retry = time.monotonic()
        if self.journal is None or not self.journal.exists():
            self._offline = False
            return 0
        lines = [json.loads(line) for line in self.journal.read_text().splitlines() if line.strip()]
        pending = [entry for entry in lines if entry["op"] in JOURNALED]
        try:
            if self.parent_run_id is None and self.sweep_arguments is not None:
                self._open_parent(**self.sweep_arguments)
            for entry in pending:
                getattr(self, f"_{entry['op']}")(**entry["kwargs"])
        except Exception as error:  # noqa: BLE001
            if not is_unreachable(error):
                raise
            return 0  # still away; replays are idempotent, so the journal stays whole
        self.journal.unlink()
        self._offline = False
        return len(pending)

    @classmethod
    def replay(cls, journal: str | os.PathLike, *, tracking_uri: str | None = None) -> int:
        """Replay a journal left by a sweep whose MLflow server was unreachable."""
        path = Path(journal)
        header = json.loads(path.read_text().splitlines()[0])["kwargs"]
        tracker = cls(
            tracking_uri=tracking_uri or header.pop("tracking_uri"), experiment=header.pop("experiment"), journal=path
        )
        header.pop("tracking_uri", None)
        tracker.sweep_arguments = header
        check_uri(tracker.tracking_uri)
        try:
            count = tracker.flush()
        except MlflowException as error:
            refused = refusal(error, tracking_uri=tracker.tracking_uri, experiment=tracker.experiment)
            if refused is None:
                raise
            raise refused from error
        if path.exists():
            raise TrackingUnavailable(f"MLflow at {tracker.tracking_uri} is still unreachable; {path} is kept.")
        return count
