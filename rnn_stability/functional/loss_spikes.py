r"""Loss-spike detection: ZClip's z-score rule applied to the log of the training loss, with a ratio floor.

The rule follows ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
arXiv:2504.02507), moved from the gradient norm to the loss, and the outlier multiplier of llm-foundry's
`KillLossSpike` callback (a loss is an outlier above twice the recent mean). What to do about a spike
(skip the step, roll back) is `rnn_stability.callbacks.LossSpikeRecovery`'s business.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rnn_stability.functional.clipping._checks import as_scalar_tensor, check_positive
from rnn_stability.functional.clipping.host_scalars import host_float, uses_host_scalars
from rnn_stability.functional.clipping.zscore import ZScoreClipper

__all__ = ["LossSpikeDetector", "mean_across_ranks"]

_CPU = torch.device("cpu")


class LossSpikeDetector:
    r"""Flags a loss that is non-finite, or a spike of its log against an EMA of past log-losses.

    With $x_t = \log \ell_t$ and $\mu, \sigma^2$ the statistics of the past log-losses, step $t$ is bad when

    $$\ell_t \notin \mathbb{R} \quad\text{or}\quad x_t > \mu + \max(z\,\sigma,\ \log r),$$

    i.e. its z-score exceeds `z_threshold` (ZClip, Kumar et al. 2025) *and* the loss exceeds `min_ratio`
    times the EMA level $e^{\mu}$ (llm-foundry's `KillLossSpike` uses a multiplier of 2 on the window mean).
    The statistics are ZClip's, kept by `rnn_stability.functional.ZScoreClipper` on $x_t$: the first
    `warmup_steps` finite log-losses only initialise them (no spike is flagged during warm-up, only
    non-finite losses), then $\mu \leftarrow \alpha\mu + (1-\alpha)\hat x$,
    $\sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(\hat x - \mu)^2$ with $\hat x = \min(x, \mu + z\sigma)$,
    so a spike is folded in at the threshold and a genuine, lasting rise of the loss is absorbed within a few
    dozen steps instead of being flagged forever.

    Working on the log makes the rule scale-free: a spike is a jump by a *factor*, whatever the loss's units.
    A loss of exactly 0 is never a spike and stays out of the history; a negative loss has no log, so
    callers should refuse it (see `LossSpikeRecovery`). Everything stays in 0-d tensors: `step` never
    synchronises with the host.

    Defaults differ from ZClip's gradient-clipping ones on purpose: a false alarm here costs a whole update (or
    a rollback), not a rescaled gradient, so the z threshold is 4 rather than 2.5; the per-batch noise of
    a log-loss is roughly Gaussian (σ ≈ 0.25 for an MSE over 32 samples), where $z > 4$ happens once in
    ~30 000 steps, and the ratio floor keeps a near-deterministic loss (σ → 0) from flagging tiny rises.

    Args:
        alpha: EMA factor in `(0, 1)` (ZClip: 0.97).
        z_threshold: z-score of the log-loss above which a step is a spike (> 0; default 4).
        warmup_steps: finite losses that initialise the statistics before any spike is flagged (>= 2).
        min_ratio: a spike must also exceed this multiple of the EMA level $e^{\mu}$ (>= 1; default 2).

    Raises:
        ValueError: if an argument is outside its range.
        TypeError: if an argument has the wrong type.

    Examples:
        >>> import torch
        >>> detector = LossSpikeDetector(warmup_steps=3)
        >>> [bool(detector.step(torch.tensor(x))) for x in (1.0, 1.1, 0.9, 1.0, 30.0, float("nan"), 0.95)]
        [False, False, False, False, True, True, False]
        >>> detector.state_dict()["count"]  # the NaN stayed out of the history
        6
    """

    def __init__(
        self, alpha: float = 0.97, z_threshold: float = 4.0, warmup_steps: int = 25, min_ratio: float = 2.0
    ) -> None:
        self._stats = ZScoreClipper(alpha, z_threshold, warmup_steps)
        self.min_ratio = check_positive("min_ratio", min_ratio)
        if self.min_ratio < 1.0:
            raise ValueError(f"`min_ratio` must be a finite float >= 1, got {min_ratio!r}.")
        self._log_ratio = math.log(self.min_ratio)

    @property
    def alpha(self) -> float:
        return self._stats.alpha

    @property
    def z_threshold(self) -> float:
        return self._stats.z_threshold

    @property
    def warmup_steps(self) -> int:
        return self._stats.warmup_steps

    def log_threshold(self) -> Tensor:
        """Threshold on the log-loss, $\\mu + \\max(z\\sigma, \\log r)$; `inf` during warm-up (0-d tensor)."""
        return torch.maximum(self._stats.threshold(), self._stats.mean + self._log_ratio)

    def threshold(self) -> Tensor:
        """Threshold on the loss itself, `exp(log_threshold())` (0-d tensor)."""
        return self.log_threshold().exp()

    def step(self, loss: Tensor | float) -> Tensor:
        """Judge `loss` against the past (bool 0-d tensor: non-finite or spike), then fold it into the history."""
        loss = as_scalar_tensor("loss", loss).detach().reshape(()).float()
        if uses_host_scalars(loss.device):
            return torch.tensor(self.judge(loss.item()))
        log_loss = loss.log()
        bad = ~torch.isfinite(loss) | (log_loss > self.log_threshold().to(log_loss.device))
        self._stats.update(log_loss)  # non-finite log-losses (NaN, Inf, log 0 = -inf) leave it unchanged
        return bad

    def judge(self, loss: float) -> bool:
        """`step` for a loss already read on the host: a Python number in, a bool out, no tensor operation.

        `step` takes this path on the CPU (`rnn_stability.functional.uses_host_scalars`): there a dozen 0-d
        tensor operations cost more than the arithmetic (~0.3 ms per step inside a training loop, 2 % of a
        small LSTM's step). The statistics are `ZScoreClipper`'s host scalars, rounded to float32 as its
        tensors are, so the two paths can follow each other.

        Examples:
            >>> detector = LossSpikeDetector(warmup_steps=3)
            >>> [detector.judge(x) for x in (1.0, 1.1, 0.9, 1.0, 30.0, float("nan"), 0.95)]
            [False, False, False, False, True, True, False]
        """
        stats = self._stats
        stats._place(_CPU)  # the statistics as host scalars (a one-off read if they were on a device)
        value = host_float(float(loss))  # in float32, as `step` judges it (1e39 is inf there)
        # log 0 = -inf and the log of a negative is NaN, as torch's
        log_loss = host_float(math.log(value) if value > 0 else (-math.inf if value == 0 else math.nan))
        mean = stats._mean
        # the z bound from the past statistics (inf in warm-up); then log_loss is folded in
        z_bound = stats._step_on_host(log_loss)
        bound = max(z_bound, mean + host_float(self._log_ratio))
        return not math.isfinite(value) or bool(log_loss > bound)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state: the log-loss statistics (`mean`, `var`, `count`) and the hyper-parameters."""
        return {**self._stats.state_dict(), "min_ratio": self.min_ratio}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the statistics saved by `state_dict` (keeps this object's hyper-parameters)."""
        self._stats.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, z_threshold={self.z_threshold}, "
            f"warmup_steps={self.warmup_steps}, min_ratio={self.min_ratio})"
        )


def mean_across_ranks(value: Tensor) -> Tensor:
    """Mean of a 0-d float `value` over all ranks (`all_reduce` of the sum); itself when not distributed.

    Judging the mean loss gives every rank the same history and the same decision, and a NaN or a spike on
    one rank reaches all of them (a spike by a factor $k$ on one of $N$ ranks shows as about $k/N$).

    Examples:
        >>> import torch
        >>> mean_across_ranks(torch.tensor(2.5))
        tensor(2.5000)

    Raises:
        TypeError: if `value` is not a floating-point tensor.
        ValueError: if `value` has more than one element.
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(f"`value` must be a 0-d floating-point tensor, got {value!r}.")
    if value.numel() != 1:
        raise ValueError(f"`value` must be a 0-d tensor, got shape {tuple(value.shape)}.")
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total[0] / dist.get_world_size()
