"""ZClip: clip total-norm spikes detected by a z-score against an EMA of the norm's mean and variance.

Kumar, Owen, Ashraf, Singh (2025), "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", arXiv:2504.02507.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rnn_stability.functional.clipping._checks import check_fraction, check_positive, check_positive_int

__all__ = ["ZClip", "ZScoreClipper"]


class ZScoreClipper:
    r"""Threshold = $\mu + z\,\sigma$ of an exponential moving average of past total norms.

    Implements ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training") with its
    fixed-cap rule: a norm whose z-score $(g - \mu)/\sigma$ exceeds `z_threshold` is clipped to
    $\mu + z\,\sigma$. The first `warmup_steps` finite norms only initialise $\mu$ and
    $\sigma^2$ (their plain mean and variance) and are not clipped; afterwards the statistics follow
    $\mu \leftarrow \alpha\mu + (1-\alpha)\hat g$,
    $\sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(\hat g - \mu)^2$ with the *clipped* norm
    $\hat g$, so a spike does not inflate them. A non-finite norm leaves every statistic unchanged
    (the reference implementation is disabled for good by a single NaN). ZClip's default reciprocal
    ("adaptive scaling") rule, which clips larger spikes harder, is not implemented: a threshold that depends
    on the norm being clipped would not fit the `threshold()` interface shared with the other strategies.
    All state lives in 0-d tensors,
    so `step` never synchronises with the host.

    Use `step` (`threshold` from the past, then `update`).

    Args:
        alpha: EMA smoothing factor in `(0, 1)`; the paper uses 0.97.
        z_threshold: z-score above which a norm is a spike (> 0); the paper uses 2.5.
        warmup_steps: finite norms used to initialise the statistics before any clipping (>= 1); paper: 25.

    Raises:
        ValueError: if an argument is outside its range.

    Examples:
        >>> import torch
        >>> clipper = ZScoreClipper(alpha=0.9, z_threshold=2.0, warmup_steps=3)
        >>> [round(clipper.step(torch.tensor(x)).item(), 4) for x in (1.0, 2.0, 3.0, float("inf"), 100.0)]
        [inf, inf, inf, 3.633, 3.633]
        >>> round(clipper.state_dict()["mean"], 4)
        2.1633
    """

    def __init__(self, alpha: float = 0.97, z_threshold: float = 2.5, warmup_steps: int = 25) -> None:
        self.alpha = check_fraction("alpha", alpha, 0.0, 1.0, open_low=True)
        if self.alpha == 1.0:
            raise ValueError(f"`alpha` must be a float in (0, 1), got {alpha!r}.")
        self.z_threshold = check_positive("z_threshold", z_threshold)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        self._mean = torch.tensor(0.0)
        self._var = torch.tensor(0.0)
        self._count = torch.tensor(0, dtype=torch.int64)  # finite norms seen (a tensor: no sync to update)

    def _move_to(self, device: torch.device) -> None:
        if self._mean.device != device:
            self._mean, self._var, self._count = (t.to(device) for t in (self._mean, self._var, self._count))

    def threshold(self) -> Tensor:
        """The current threshold, a 0-d float32 tensor (`inf` during warm-up)."""
        cap = self._mean + self.z_threshold * self._var.sqrt()
        return torch.where(self._count < self.warmup_steps, math.inf, cap)

    @property
    def mean(self) -> Tensor:
        """The EMA (during warm-up: running) mean of the recorded values, a 0-d tensor (no sync)."""
        return self._mean

    def update(self, total_norm: Tensor) -> None:
        """Fold `total_norm` (clipped to the current threshold) into the statistics; non-finite is ignored."""
        self._move_to(total_norm.device)
        norm = total_norm.detach().reshape(()).to(self._mean.dtype)
        finite = torch.isfinite(norm)
        norm = torch.where(finite, norm, self._mean)
        warming_up = self._count < self.warmup_steps
        # warm-up: running mean and population variance (Welford)
        n = (self._count + 1).to(norm.dtype)
        delta = norm - self._mean
        warm_mean = self._mean + delta / n
        warm_var = self._var + (delta * (norm - warm_mean) - self._var) / n
        # afterwards: EMA of the clipped norm
        clipped = torch.minimum(norm, self.threshold())
        ema_mean = self.alpha * self._mean + (1.0 - self.alpha) * clipped
        ema_var = self.alpha * self._var + (1.0 - self.alpha) * (clipped - ema_mean) ** 2
        new_mean = torch.where(warming_up, warm_mean, ema_mean)
        new_var = torch.where(warming_up, warm_var, ema_var)
        self._mean = torch.where(finite, new_mean, self._mean)
        self._var = torch.where(finite, new_var, self._var)
        self._count = self._count + finite.to(self._count.dtype)

    def step(self, total_norm: Tensor) -> Tensor:
        """Return the threshold for `total_norm` (from past statistics), then record it."""
        threshold = self.threshold()
        self.update(total_norm)
        return threshold

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state: EMA mean and variance (floats) and the count of finite norms seen."""
        return {
            "alpha": self.alpha,
            "z_threshold": self.z_threshold,
            "warmup_steps": self.warmup_steps,
            "mean": self._mean.item(),
            "var": self._var.item(),
            "count": int(self._count.item()),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the statistics saved by `state_dict` (keeps this object's hyper-parameters)."""
        device = self._mean.device
        self._mean = torch.tensor(float(state_dict["mean"]), device=device)
        self._var = torch.tensor(float(state_dict["var"]), device=device)
        self._count = torch.tensor(int(state_dict["count"]), dtype=torch.int64, device=device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, z_threshold={self.z_threshold}, "
            f"warmup_steps={self.warmup_steps})"
        )


ZClip = ZScoreClipper
"""Alias naming the published method."""
