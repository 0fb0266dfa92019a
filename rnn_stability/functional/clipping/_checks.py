"""Argument checks shared by the clipping strategies; each message names the argument and its range."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["as_scalar_tensor", "check_fraction", "check_positive", "check_positive_int", "check_state_keys"]


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


def as_scalar_tensor(name: str, value: object) -> Tensor:
    """`value` if it is a one-element real tensor, a float32 0-d tensor if it is a Python number, else raise."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"`{name}` must be a real 0-d tensor or a float, got dtype {value.dtype}.")
        if value.numel() != 1:
            raise ValueError(f"`{name}` must be a 0-d tensor or a float, got shape {tuple(value.shape)}.")
        return value
    if _is_real(value):
        return torch.tensor(float(value))  # type: ignore[arg-type]
    raise TypeError(f"`{name}` must be a 0-d tensor or a float, got {type(value).__name__}.")


def check_state_keys(state_dict: object, keys: Iterable[str]) -> Mapping[str, Any]:
    """Return `state_dict` if it is a mapping holding every one of `keys`, else raise naming the missing ones."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`state_dict` must be a dict from `state_dict()`, got {type(state_dict).__name__}.")
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise ValueError(
            f"`state_dict` lacks {', '.join(map(repr, missing))}: pass what this object's `state_dict()` returned."
        )
    return state_dict
