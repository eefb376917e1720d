"""Checks shared by a space's model and its YAML validation; each error they raise names the file."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dp_core.errors import ConfigError, require

__all__ = ["in_file", "is_int", "is_number", "require_in", "require_one_device"]


@contextlib.contextmanager
def in_file(path: Path) -> Iterator[None]:
    """Re-raise dp_core's ConfigError messages with the file named, as ``from_dict(where=)`` does."""
    try:
        yield
    except ConfigError as error:
        raise ConfigError(f"{error} (in {path})") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_in(path: Path) -> Any:
    def check(condition: bool, *, key: str, value: Any, allowed: str) -> None:
        with in_file(path):
            require(condition, key=key, value=value, allowed=allowed)

    return check


def require_one_device(gpus: float, *, where: str) -> None:
    """Refuse more than one GPU for a trial that trains on one device (every kind but federated).

    ``dp_core.train`` uses one device: a second GPU would sit idle, paid for. Training one trial on
    several (Opacus' DPDDP) needs one noise draw per step shared by every rank; a sweep gets more
    from its GPUs by running trials side by side, which Ray Tune does already.
    """
    if gpus > 1:
        raise ConfigError(
            f"Expected at most 1 GPU per trial (a trial trains on one device), but got {where}. Ray Tune runs "
            "more trials side by side instead: gpus: 1 gives each trial a whole GPU, and a fraction such as "
            "gpus: 0.25 packs four trials on one GPU."
        )
