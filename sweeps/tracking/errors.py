"""How dpsweep tells MLflow's failures apart: unreachable (journal the write and go on) or
refusing the sweep's account (stop, naming the variables to set)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import requests
from mlflow.exceptions import MlflowException

__all__ = ["TrackingUnavailable", "TrackingRefused", "refusal", "check_uri", "is_unreachable"]


class TrackingUnavailable(RuntimeError):
    """MLflow cannot be reached (server down, network, locked database)."""


class TrackingRefused(RuntimeError):
    """MLflow answered but refused the sweep's account: none or a wrong one (HTTP 401), or one
    without permission for the experiment (403). The message names the variables to set."""


_SET_ACCOUNT = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def refusal(error: BaseException, *, tracking_uri: str, experiment: str) -> TrackingRefused | None:
    """The TrackingRefused that ``error`` means, or None. Names no user and no secret."""
    code = error.error_code if isinstance(error, MlflowException) else None
    if code == "UNAUTHENTICATED":
        given = bool(
            os.environ.get("MLFLOW_TRACKING_USERNAME")
            or os.environ.get("MLFLOW_TRACKING_TOKEN")
            or Path("~/.mlflow/credentials").expanduser().exists()
        )
        what = "refused the account it was given" if given else "requires an account, and none was given"
        return TrackingRefused(
            f"MLflow at {tracking_uri} {what} (HTTP 401): {_SET_ACCOUNT} to an account of that server."
        )
    if code == "PERMISSION_DENIED":
        return TrackingRefused(
            f"MLflow at {tracking_uri} does not let this account write to experiment "
            f"{experiment!r} (HTTP 403): {_SET_ACCOUNT} to an account with EDIT permission on it, "
            "or have an MLflow admin grant it (infra/README.md)."
        )
    return None


def check_uri(tracking_uri: str) -> None:
    """A URI with a user or password in it would put them in the console, the journal and the job."""
    parts = urlsplit(tracking_uri)
    if parts.username or parts.password:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise TrackingRefused(
            f"Expected a tracking URI without credentials, but got one with a user or password "
            f"before the host ({shown}): {_SET_ACCOUNT} instead."
        )


def is_unreachable(error: BaseException) -> bool:
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(error, sqlite3.OperationalError):
        return True
    if isinstance(error, MlflowException):
        text = str(error)
        return (
            "failed with exception" in text
            or "Max retries exceeded" in text
            or "TEMPORARILY_UNAVAILABLE" in str(error.error_code)
            or "database is locked" in text
        )
    return False
