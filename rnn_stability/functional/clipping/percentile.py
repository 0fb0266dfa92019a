"""AutoClip: clip to a percentile of the recent history of total gradient norms.

Seetharaman, Wichern, Pardo, Le Roux (2020), "AutoClip: Adaptive Gradient Clipping for Source
Separation Networks", IEEE MLSP.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rnn_stability.functional.clipping._checks import (
    as_scalar_tensor,
    check_fraction,
    check_positive_int,
    check_state_keys,
)
from rnn_stability.functional.clipping.host_scalars import host_float, uses_host_scalars

__all__ = ["AutoClip", "PercentileClipper"]


class PercentileClipper:
    r"""Threshold = the `percentile`-th percentile of the last `window_size` total gradient norms.

    Implements AutoClip (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks"). The reference keeps the whole history; here it is a bounded ring buffer on
    the norms' device, so memory is fixed and the threshold follows the recent regime. Percentiles are
    linearly interpolated (as `numpy.percentile` in the reference). A non-finite norm is stored as NaN and
    ignored by `torch.nanquantile` (it never enters the statistics), and an empty window gives an infinite
    threshold (no clipping). On accelerators everything stays on the device and `step` never synchronises
    with the host; on the CPU the norm is written into the window from the host (see
    `rnn_stability.functional.uses_host_scalars`), with identical thresholds.

    Use `step` (`update` then `threshold`, as in the paper: the current norm is part of the
    history it is compared against).

    Args:
        percentile: which percentile of the history to clip to, in `[0, 100]`; the paper's default is 10.
        window_size: how many past norms to keep (>= 1).

    Raises:
        ValueError: if `percentile` is outside `[0, 100]` or `window_size` < 1.

    Examples:
        >>> import torch
        >>> clipper = PercentileClipper(percentile=50.0, window_size=3)
        >>> [clipper.step(torch.tensor(x)).item() for x in (1.0, 3.0, float("nan"), 5.0, 7.0)]
        [1.0, 2.0, 2.0, 4.0, 6.0]
        >>> clipper.state_dict()
        {'percentile': 50.0, 'window_size': 3, 'window': [nan, 5.0, 7.0]}
    """

    def __init__(self, percentile: float = 10.0, window_size: int = 1000) -> None:
        self.percentile = check_fraction("percentile", percentile, 0.0, 100.0)
        self.window_size = check_positive_int("window_size", window_size)
        self._buffer: Tensor | None = None
        self._count = 0  # observations so far (Python int: advancing it needs no sync)

    def _buffer_on(self, device: torch.device) -> Tensor:
        if self._buffer is None:
            self._buffer = torch.full((self.window_size,), math.nan, device=device)
        elif self._buffer.device != device:
            self._buffer = self._buffer.to(device)
        return self._buffer

    def update(self, total_norm: Tensor | float) -> None:
        """Append `total_norm` (a 0-d tensor or a float) to the window (a non-finite norm takes a slot but is
        ignored)."""
        total_norm = as_scalar_tensor("total_norm", total_norm)
        buffer = self._buffer_on(total_norm.device)
        slot = self._count % self.window_size
        self._count += 1
        if uses_host_scalars(buffer.device):  # one host write instead of four tiny tensor operations
            value = host_float(total_norm.item())
            buffer.numpy()[slot] = value if math.isfinite(value) else math.nan
            return
        norm = total_norm.detach().reshape(()).to(buffer.dtype)
        buffer[slot] = torch.where(torch.isfinite(norm), norm, math.nan)

    def threshold(self) -> Tensor:
        """The current threshold, a 0-d float32 tensor (`inf` while no finite norm has been seen)."""
        if self._buffer is None:
            return torch.tensor(math.inf)
        value = torch.nanquantile(self._buffer, self.percentile / 100.0)
        return torch.where(torch.isnan(value), math.inf, value)

    def step(self, total_norm: Tensor | float) -> Tensor:
        """Record `total_norm` (a 0-d tensor or a float) and return the threshold to clip it to."""
        self.update(total_norm)
        return self.threshold()

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state: the window's contents, oldest first, as floats (NaN for ignored norms)."""
        window: list[float] = []
        if self._buffer is not None and self._count > 0:
            filled = min(self._count, self.window_size)
            start = self._count % self.window_size if self._count >= self.window_size else 0
            order = [(start + i) % self.window_size for i in range(filled)]
            window = self._buffer[order].tolist()
        return {"percentile": self.percentile, "window_size": self.window_size, "window": window}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the window saved by `state_dict` (keeps this object's `percentile`/`window_size`).

        Raises:
            ValueError: if `state_dict` has no `"window"` or it holds more norms than `window_size`.
            TypeError: if `state_dict` is not a mapping.
        """
        window = [float(x) for x in check_state_keys(state_dict, ["window"])["window"]]
        if len(window) > self.window_size:
            raise ValueError(
                f"`state_dict['window']` holds {len(window)} norms, more than `window_size`={self.window_size}."
            )
        device = self._buffer.device if self._buffer is not None else torch.device("cpu")
        self._buffer = torch.full((self.window_size,), math.nan, device=device)
        if window:
            self._buffer[: len(window)] = torch.tensor(window, dtype=self._buffer.dtype)
        self._count = len(window)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(percentile={self.percentile}, window_size={self.window_size})"


AutoClip = PercentileClipper
"""Alias naming the published method."""
