"""Configuration errors in one shape: ConfigError and the require_* checks.

Each check names the key, the bad value and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["ConfigError", "require", "require_positive", "require_in_range", "require_choice"]


class ConfigError(ValueError):
    """A setting given by the user is invalid; the message names the key, the value and the rule."""


def require(condition: bool, *, key: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("Expected key=value to be <allowed>")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"Expected {key} {allowed}, but got {key}={value!r}.")


def require_positive(value: float, *, key: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    require(ok, key=key, value=value, allowed="to be a finite number > 0")


def require_in_range(
    value: float, *, key: str, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """Check ``low <= value <= high`` (or strict where ``*_open``) and that value is a finite number."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = is_number and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    require(ok, key=key, value=value, allowed=f"in {left}{low}, {high}{right}")


def require_choice(value: Any, *, key: str, choices: Iterable[str]) -> None:
    known = sorted(choices)
    require(value in known, key=key, value=value, allowed=f"to be one of {', '.join(known)}")
