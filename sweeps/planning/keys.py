"""A trial's identity: the hash of its flat configuration and its name, never of its seed.

Its own module because the planner, the trial workers and the tracker all need it, and the
workers should not import MLflow (start-up time in every worker) to get a hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["trial_key", "released_params"]


def trial_key(train_config: Mapping[str, Any], *, name: str | None = None) -> str:
    """A stable identity for a trial: the hash of its flat configuration without the seed, and its
    name (unique in a sweep, so two trials of one configuration stay two trials).

    The key is a tag in MLflow: a hash of the seed would let anyone with the configuration test
    guesses of a seed, which must stay secret (:mod:`sweeps.privacy.sweep_secret`).
    """
    identity = released_params(train_config)
    if name is not None:
        identity["name"] = name
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def released_params(train_config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat configuration as it may be shown or logged: without the training seed."""
    return {k: v for k, v in train_config.items() if k != "seed"}
