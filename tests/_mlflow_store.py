"""An empty MLflow sqlite store, copied where a test's sweep or tracker will log.

MLflow creates its schema (every migration since its first release) in a new sqlite file: about
3 s of CPU, in the launcher or the test, each time. The suite makes the schema once per process
and copies the file; the store a test then opens is what a new one would be.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

__all__ = ["empty_sqlite_store"]


@functools.cache
def _schema() -> Path:
    """The empty store this process copies, made on first use."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="dpsweep-mlflow-schema-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def empty_sqlite_store(path: Path) -> str:
    """The URI of the sqlite store at ``path``: an empty one copied there unless a store is there already
    (a second launch of one test logs beside its first)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_schema(), path)
    return f"sqlite:///{path}"
