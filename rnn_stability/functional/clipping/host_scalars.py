"""Which path the clipping rules take: host scalars on the CPU, sync-free 0-d tensors on accelerators.

The one rule, used by every clipping function and clipper in `rnn_stability.functional.clipping`:

- **CPU: host scalars.** Reading a CPU tensor's value costs nothing, so the norm is read as a Python number,
  gradients are rescaled only when the factor is not 1, and the bookkeeping of the adaptive strategies (the
  z-score EMA, the percentile window) is done on host scalars instead of a dozen tiny tensor operations.
- **CUDA / MPS / XLA (every other device): no host sync.** A host read would stall the device's stream, so
  thresholds stay in 0-d tensors on the device, the decision to clip is a `torch.where`, and the rescale
  always runs (by exactly 1 when nothing is clipped: one memory pass, no wait).

Both paths give bit-identical results (the host path rounds its arithmetic to float32 exactly as the
tensors do); `force_sync_free` runs the sync-free path on the CPU too, which is how the tests compare them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["force_sync_free", "uses_host_scalars"]

HOST_FLOATS: dict[torch.dtype, type[np.floating]] = {torch.float32: np.float32, torch.float64: np.float64}
"""numpy scalar types whose arithmetic rounds exactly as 0-d CPU tensors of these dtypes do."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)

_forced_sync_free = False


def uses_host_scalars(device: torch.device) -> bool:
    """Whether clipping on `device` reads values on the host (the CPU) or stays sync-free (anything else).

    Args:
        device: the device of the gradients' total norm (or of the values being clipped), a `torch.device`
            or its name (`"cpu"`, `"cuda:0"`).

    Returns:
        `True` for the CPU, unless inside `force_sync_free`; `False` for CUDA, MPS, XLA and every other device.

    Examples:
        >>> import torch
        >>> uses_host_scalars(torch.device("cpu")), uses_host_scalars(torch.device("cuda"))
        (True, False)

    Raises:
        TypeError: if `device` is neither a `torch.device` nor a string.
        ValueError: if `device` is a string that names no device.
    """
    if not isinstance(device, torch.device):
        device = _as_device(device)
    return device.type == "cpu" and not _forced_sync_free


def _as_device(device: object) -> torch.device:
    if not isinstance(device, str):
        raise TypeError(f"`device` must be a torch.device or a device name, got {type(device).__name__}.")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"`device` must name a device, got {device!r} ({error}).") from None


@contextmanager
def force_sync_free() -> Iterator[None]:
    """Inside this block every device, the CPU included, takes the sync-free path (for tests and comparisons).

    Not thread-safe: it switches a module-level flag.

    Examples:
        >>> import torch
        >>> with force_sync_free():
        ...     uses_host_scalars(torch.device("cpu"))
        False
        >>> uses_host_scalars(torch.device("cpu"))
        True
    """
    global _forced_sync_free
    previous, _forced_sync_free = _forced_sync_free, True
    try:
        yield
    finally:
        _forced_sync_free = previous


def host_float(value: float, kind: type[np.floating] = np.float32) -> np.floating:
    """`value` rounded to `kind` as a tensor of that dtype rounds it (to nearest; `inf` beyond the range)."""
    if abs(value) <= _FLOAT32_MAX:
        return kind(value)
    with np.errstate(over="ignore"):  # numpy warns where torch silently rounds to inf
        return kind(value)
