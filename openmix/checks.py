"""Argument checks shared by mixers, data modules and models: one wording for every error."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_int", "check_bool", "check_number"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``, else a ``ValueError`` naming ``name``.

    Example:
        >>> check_int("batch_size", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_number(name: str, value: Any, *, low: float, high: float | None = None, high_open: bool = False) -> float:
    """``value`` as a float if it is finite and lies in ``[low, high]`` (``[low, high)`` with ``high_open``).

    Raises:
        TypeError: not a number (bools are refused).
        ValueError: outside the range, NaN or infinite.

    Example:
        >>> check_number("prob", 1.5, low=0.0, high=1.0)
        Traceback (most recent call last):
        ...
        ValueError: prob must be in [0.0, 1.0], got 1.5
        >>> check_number("alpha", float("inf"), low=0.0)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be a finite number, got inf
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    too_high = high is not None and (value >= high if high_open else value > high)
    if value < low or too_high:
        bound = f"in [{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)
