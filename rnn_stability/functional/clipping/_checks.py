"""Argument checks shared by the clipping strategies; each message names the argument and its range."""

from __future__ import annotations

import math

__all__ = ["check_fraction", "check_positive", "check_positive_int"]


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: object, *, allow_inf: bool = False) -> float:
    """Return `value` as a float if it is a finite (or, if allowed, infinite) number > 0, else raise."""
    if not _is_real(value):
        raise TypeError(f"`{name}` must be a positive float, got {value!r}.")
    number = float(value)  # type: ignore[arg-type]
    if not (number > 0 and (allow_inf or math.isfinite(number))):
        raise ValueError(
            f"`{name}` must be a positive{'' if allow_inf else ', finite'} float, got {value!r}."
        )
    return number


def check_positive_int(name: str, value: object) -> int:
    """Return `value` if it is an int >= 1, else raise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a positive int, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive int (>= 1), got {value!r}.")
    return value


def check_fraction(name: str, value: object, low: float, high: float, *, open_low: bool = False) -> float:
    """Return `value` as a float if it lies in `[low, high]` (`(low, high]` if `open_low`), else raise."""
    if not _is_real(value):
        raise TypeError(
            f"`{name}` must be a float in {'(' if open_low else '['}{low}, {high}], got {value!r}."
        )
    number = float(value)  # type: ignore[arg-type]
    if not ((low < number if open_low else low <= number) and number <= high):
        raise ValueError(
            f"`{name}` must be a float in {'(' if open_low else '['}{low}, {high}], got {value!r}."
        )
    return number
