"""A faster sqlite tracking store: write-ahead log for the sqlite files the tracker writes.

This installs a process-wide SQLAlchemy ``connect`` listener (on the first sqlite store only),
which acts on connections to the registered files and leaves every other database alone.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

__all__ = ["fast_sqlite"]

# sqlite files (real paths) whose connections in this process use a write-ahead log; see fast_sqlite.
_WAL_DATABASES: set[str] = set()


def fast_sqlite(tracking_uri: str) -> None:
    """Open an sqlite tracking store in WAL mode with ``synchronous=NORMAL``.

    In its default rollback-journal mode sqlite creates, syncs and deletes a journal file on
    every commit, and MLflow commits several times per call: a large share of the tracking
    thread's CPU (``docs/benchmarks.md``). With a write-ahead log a commit is an append, synced at
    checkpoints; an application crash loses nothing, a power cut can lose the last commits, and
    the file stays consistent. Readers (``mlflow ui``) no longer block the writer. Only the
    given file is affected, and only connections made by this process.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    if not _WAL_DATABASES:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        @event.listens_for(Engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            if not isinstance(dbapi_connection, sqlite3.Connection):
                return
            main = next((row[2] for row in dbapi_connection.execute("PRAGMA database_list") if row[1] == "main"), "")
            if main and os.path.realpath(main) in _WAL_DATABASES:
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
                dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    _WAL_DATABASES.add(os.path.realpath(tracking_uri[len("sqlite:///") :]))
