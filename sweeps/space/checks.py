"""Checks shared by a space's model and its YAML validation; each error they raise names the file."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dp_core.errors import ConfigError, require

__all__ = ["in_file", "is_int", "is_number", "require_in"]


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
