"""A trial's identity: the hash of its flat configuration.

Its own module because the planner, the trial workers and the tracker all need it, and the
workers should not import MLflow (a second of start-up each) to get a hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["trial_key"]


def trial_key(train_config: Mapping[str, Any]) -> str:
    """A stable identity for a trial: the hash of its flat configuration."""
    text = json.dumps(dict(train_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
