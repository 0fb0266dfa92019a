"""ZClip: clip total-norm spikes detected by a z-score against an EMA of the norm's mean and variance.

Kumar, Owen, Ashraf, Singh (2025), "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", arXiv:2504.02507.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnn_stability.functional.clipping._checks import (
    as_scalar_tensor,
    check_fraction,
    check_positive,
    check_positive_int,
    check_state_keys,
)
from rnn_stability.functional.clipping.host_scalars import host_float, uses_host_scalars

__all__ = ["ZClip", "ZScoreClipper"]

RULES = ("cap", "reciprocal")
"""Accepted values of `clip_rule` in `ZScoreClipper`."""

_PLAIN, _PLAIN_VAR = np.float32(1e15), np.float32(1e30)
"""Bounds on |norm| and |mean|, and on the variance, within which no float32 operation of a host step can
overflow or be invalid (with `z_threshold` in [1e-10, 1e10]): products stay under 1e31, quotients' divisors
above the 1e-6 added to σ."""

_EPS = 1e-6
"""Added to σ in the z-score of the reciprocal rule, as the `zclip` package does (its `eps`)."""

# The formulas, written once for 0-d float32 tensors (the sync-free path) and numpy float32 scalars (the host
# path): every operation rounds to float32 in both, so the two paths agree bit for bit.


def _welford(mean: Any, var: Any, n: Any, x: Any) -> tuple[Any, Any]:
    """Running mean and population variance after the `n`-th value `x` (warm-up)."""
    delta = x - mean
    new_mean = mean + delta / n
    return new_mean, var + (delta * (x - new_mean) - var) / n


def _ema(mean: Any, var: Any, x: Any, alpha: Any, beta: Any) -> tuple[Any, Any]:
    """EMA of mean and variance with factor `alpha` (`beta` = 1 - alpha), variance about the new mean."""
    new_mean = alpha * mean + beta * x
    deviation = x - new_mean
    return new_mean, alpha * var + beta * (deviation * deviation)


def _zscore(mean: Any, std: Any, x: Any, eps: Any) -> Any:
    """z-score of `x`, with `eps` added to σ as the `zclip` package does."""
    return (x - mean) / (std + eps)


def _reciprocal(mean: Any, std: Any, score: Any, z: Any) -> Any:
    """ZClip's reciprocal ("adaptive scaling") threshold μ + zσ / (score / z), for a spike (score > z)."""
    return mean + (z * std) / (score / z)


class ZScoreClipper:
    r"""Clip total gradient norms whose z-score against an EMA of past norms exceeds `z_threshold`.

    Implements ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
    arXiv:2504.02507). The first `warmup_steps` finite norms only initialise $\mu$ and $\sigma^2$ (their
    plain mean and variance) and are not clipped. Afterwards a norm $g$ is a spike when its z-score
    $z_g = (g - \mu)/\sigma$ exceeds $z$ = `z_threshold`, and is clipped by `clip_rule`:

    - `"cap"` (the default): to $\mu + z\sigma$, the fixed cap (the `zclip` package's `mode="percentile"`).
    - `"reciprocal"`: to $\mu + z\sigma / (z_g / z)$, the paper's default "adaptive scaling" (the `zclip`
      package's default `mode="zscore"`), which clips larger spikes harder; there
      $z_g = (g - \mu)/(\sigma + 10^{-6})$ as in the package.

    `max_grad_norm` adds an absolute cap on top, warm-up included (the package's `max_grad_norm`; its
    default there is 1.0, here `None`: no cap). The statistics then follow
    $\mu \leftarrow \alpha\mu + (1-\alpha)\hat g$,
    $\sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(\hat g - \mu)^2$ with $\hat g$ the norm clipped by the
    rule (not by `max_grad_norm`), so a spike does not inflate them. A non-finite norm leaves every statistic
    unchanged (the reference implementation is disabled for good by a single NaN).

    On the CPU the statistics are host scalars (numpy float32, rounded exactly as the tensors are); on
    accelerators they are 0-d tensors on the device and `step` never synchronises with the host (see
    `rnn_stability.functional.uses_host_scalars`). Both give identical thresholds.

    Use `step` (the threshold for this norm from the past statistics, then `update`).

    Args:
        alpha: EMA smoothing factor in `(0, 1)`; the paper uses 0.97.
        z_threshold: z-score above which a norm is a spike (> 0); the paper uses 2.5.
        warmup_steps: finite norms used to initialise the statistics before any clipping (>= 2: the
            variance of a single norm is 0, which would clip at the mean); paper: 25.
        clip_rule: `"cap"` or `"reciprocal"` (see above).
        max_grad_norm: absolute cap on the norm (> 0), or `None` for none.

    Raises:
        ValueError: if an argument is outside its range.
        TypeError: if an argument has the wrong type.

    Examples:
        >>> import torch
        >>> clipper = ZScoreClipper(alpha=0.9, z_threshold=2.0, warmup_steps=3)
        >>> [round(clipper.step(torch.tensor(x)).item(), 4) for x in (1.0, 2.0, 3.0, float("inf"), 100.0)]
        [inf, inf, inf, 3.633, 3.633]
        >>> round(clipper.state_dict()["mean"], 4)
        2.1633
        >>> paper = ZScoreClipper(alpha=0.9, z_threshold=2.0, warmup_steps=3, clip_rule="reciprocal")
        >>> [round(paper.step(torch.tensor(x)).item(), 4) for x in (1.0, 2.0, 3.0, 100.0)]  # 2 + 4σ²/98
        [inf, inf, inf, 2.0272]
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_threshold: float = 2.5,
        warmup_steps: int = 25,
        clip_rule: str = "cap",
        max_grad_norm: float | None = None,
    ) -> None:
        self.alpha = check_fraction("alpha", alpha, 0.0, 1.0, open_low=True)
        if self.alpha == 1.0:
            raise ValueError(f"`alpha` must be a float in (0, 1), got {alpha!r}.")
        self.z_threshold = check_positive("z_threshold", z_threshold)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        if self.warmup_steps < 2:  # one norm has variance 0: sigma = 0 would clip at the mean, whatever z is
            raise ValueError(
                f"`warmup_steps` must be an int >= 2 (a variance needs two norms), got {warmup_steps!r}."
            )
        if not isinstance(clip_rule, str):
            raise TypeError(f"`clip_rule` must be one of {RULES}, got {clip_rule!r}.")
        if clip_rule not in RULES:
            raise ValueError(f"`clip_rule` must be one of {RULES}, got {clip_rule!r}.")
        self.clip_rule = clip_rule
        self.max_grad_norm = (
            None if max_grad_norm is None else check_positive("max_grad_norm", max_grad_norm, allow_inf=True)
        )
        # the constants as float32, which is how a tensor operation rounds a Python number
        self._alpha32, self._beta32 = host_float(self.alpha), host_float(1.0 - self.alpha)
        self._z32, self._eps32 = host_float(self.z_threshold), host_float(_EPS)
        self._cap32 = host_float(math.inf if self.max_grad_norm is None else self.max_grad_norm)
        self._plain_z = bool(1e-10 <= self._z32 <= 1e10)  # see `_PLAIN`
        # statistics: host scalars (mean, variance, count of finite norms seen), or the same as 0-d tensors on
        # an accelerator (`None` while on the host), so that counting there needs no sync
        self._mean, self._var, self._count = np.float32(0.0), np.float32(0.0), 0
        self._device_stats: tuple[Tensor, Tensor, Tensor] | None = None
        self._scratch: tuple[Tensor, np.ndarray] | None = None

    def _host_sqrt(self, value: np.floating) -> np.floating:
        # torch's own kernel, as on the sync-free path: its float32 sqrt (MKL's) is not numpy's, to the ulp
        if self._scratch is None:
            scratch = torch.zeros(1)
            self._scratch = (scratch, scratch.numpy())
        scratch, view = self._scratch
        view[0] = value
        scratch.sqrt_()
        return view[0]

    def _place(self, device: torch.device) -> None:
        """Hold the statistics where `device`'s norms are judged: host scalars, or tensors on `device`."""
        stats = self._device_stats
        if uses_host_scalars(device):
            if stats is not None:  # a one-off read, when the norms move to the CPU
                self._mean, self._var = np.float32(stats[0].item()), np.float32(stats[1].item())
                self._count, self._device_stats = int(stats[2].item()), None
        elif stats is None:
            # `full` fills on the device; `torch.tensor(x, device=...)` would copy from the host and wait
            self._device_stats = (
                torch.full((), float(self._mean), device=device),
                torch.full((), float(self._var), device=device),
                torch.full((), self._count, dtype=torch.int64, device=device),
            )
        elif stats[0].device != device:
            self._device_stats = (stats[0].to(device), stats[1].to(device), stats[2].to(device))

    def threshold(self) -> Tensor:
        """The norm above which a step is clipped now, a 0-d float32 tensor (`max_grad_norm` or `inf` in warm-up).

        With `"cap"` this is also the threshold a spike is clipped to; with `"reciprocal"` a spike is clipped
        lower, by how far it lies above (see `step`).
        """
        if self._device_stats is None:
            return torch.scalar_tensor(float(self._host_threshold()), dtype=torch.float32)
        mean, var, count = self._device_stats
        std = var.sqrt()
        if self.clip_rule == "cap":
            bound = mean + self.z_threshold * std
        else:
            bound = mean + self.z_threshold * (std + _EPS)
        if self.max_grad_norm is not None:
            bound = bound.clamp(max=self.max_grad_norm)
        return torch.where(count < self.warmup_steps, float(self._cap32), bound)

    def _host_threshold(self) -> np.floating:
        if self._count < self.warmup_steps:
            return self._cap32
        std = self._host_sqrt(self._var)
        if self.clip_rule == "cap":
            bound = self._mean + self._z32 * std
        else:
            bound = self._mean + self._z32 * (std + self._eps32)
        return self._cap32 if bound > self._cap32 else bound

    @property
    def mean(self) -> Tensor:
        """The EMA (during warm-up: running) mean of the recorded values, a 0-d tensor (no sync)."""
        if self._device_stats is None:
            return torch.scalar_tensor(float(self._mean), dtype=torch.float32)
        return self._device_stats[0]

    def update(self, total_norm: Tensor | float) -> None:
        """Fold `total_norm` (clipped by the rule) into the statistics; a non-finite norm is ignored."""
        self.step(total_norm)

    def step(self, total_norm: Tensor | float) -> Tensor:
        """Return the threshold to clip `total_norm` (a 0-d tensor or a float) to, then record it."""
        total_norm = as_scalar_tensor("total_norm", total_norm)
        self._place(total_norm.device)
        if self._device_stats is None:
            threshold = self._step_on_host(host_float(total_norm.item()))
            return torch.scalar_tensor(float(threshold), dtype=torch.float32)
        return self._step_on_device(total_norm.detach().reshape(()).to(torch.float32))

    def _step_on_host(self, norm: np.floating) -> np.floating:
        mean, var = self._mean, self._var
        if self._plain_z and -_PLAIN < norm < _PLAIN and -_PLAIN < mean < _PLAIN and 0 <= var < _PLAIN_VAR:
            # no operation can overflow or be invalid, so there is no warning to silence: `np.errstate` costs
            # more than the whole step once a large model's gradients have streamed through the caches
            return self._fold_on_host(norm)
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN as the tensors would give, silently
            return self._fold_on_host(norm)

    def _fold_on_host(self, norm: np.floating) -> np.floating:
        finite = math.isfinite(norm)
        x, mean, var, count = (norm if finite else self._mean), self._mean, self._var, self._count
        if count < self.warmup_steps:
            applied = self._cap32
            if finite:
                self._mean, self._var = _welford(mean, var, np.float32(count + 1), x)
        else:
            std = self._host_sqrt(var)
            if self.clip_rule == "cap":
                applied = mean + self._z32 * std
                folded = applied if x > applied or math.isnan(applied) else x  # torch.minimum
            else:
                score = _zscore(mean, std, x, self._eps32)
                if score > self._z32:  # a spike
                    applied = folded = _reciprocal(mean, std, score, self._z32)
                else:
                    bound = mean + self._z32 * (std + self._eps32)
                    applied, folded = (x if x > bound else bound), x
            if applied > self._cap32:
                applied = self._cap32
            if finite:
                self._mean, self._var = _ema(mean, var, folded, self._alpha32, self._beta32)
        if finite:
            self._count = count + 1
        return applied

    def _step_on_device(self, norm: Tensor) -> Tensor:
        assert self._device_stats is not None
        mean, var, count = self._device_stats
        finite = torch.isfinite(norm)
        x = torch.where(finite, norm, mean)
        warming_up = count < self.warmup_steps
        std = var.sqrt()
        if self.clip_rule == "cap":
            applied = mean + self.z_threshold * std
            folded = torch.minimum(x, applied)
        else:
            score = _zscore(mean, std, x, _EPS)
            spike = score > self.z_threshold
            reciprocal = _reciprocal(mean, std, score, self.z_threshold)
            bound = mean + self.z_threshold * (std + _EPS)
            applied = torch.where(spike, reciprocal, torch.where(x > bound, x, bound))
            folded = torch.where(spike, reciprocal, x)
        if self.max_grad_norm is not None:
            applied = applied.clamp(max=self.max_grad_norm)
        applied = torch.where(warming_up, float(self._cap32), applied)
        warm_mean, warm_var = _welford(mean, var, (count + 1).to(x.dtype), x)
        ema_mean, ema_var = _ema(mean, var, folded, self.alpha, 1.0 - self.alpha)
        self._device_stats = (
            torch.where(finite, torch.where(warming_up, warm_mean, ema_mean), mean),
            torch.where(finite, torch.where(warming_up, warm_var, ema_var), var),
            count + finite.to(count.dtype),
        )
        return applied

    def state_dict(self) -> dict[str, Any]:
        """Plain Python numbers: EMA mean and variance, the count of finite norms seen, `alpha`, `z_threshold`,
        `warmup_steps` (`clip_rule` and `max_grad_norm` are the constructor's business, as the others are)."""
        stats = self._device_stats
        mean, var, count = (self._mean, self._var, self._count) if stats is None else stats
        return {
            "alpha": self.alpha,
            "z_threshold": self.z_threshold,
            "warmup_steps": self.warmup_steps,
            "mean": mean.item(),
            "var": var.item(),
            "count": int(count),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the statistics saved by `state_dict` (keeps this object's settings).

        Raises:
            ValueError: if `state_dict` lacks `"mean"`, `"var"` or `"count"`.
            TypeError: if `state_dict` is not a mapping.
        """
        check_state_keys(state_dict, ["mean", "var", "count"])
        self._mean = host_float(float(state_dict["mean"]))
        self._var = host_float(float(state_dict["var"]))
        self._count = int(state_dict["count"])
        if self._device_stats is not None:  # keep them on the device they were on
            device, self._device_stats = self._device_stats[0].device, None
            self._place(device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, z_threshold={self.z_threshold}, "
            f"warmup_steps={self.warmup_steps}, clip_rule={self.clip_rule!r}, max_grad_norm={self.max_grad_norm})"
        )


ZClip = ZScoreClipper
"""Alias naming the published method."""
