"""Summary statistics of a temporal gradient-flow profile: decay rate, memory length and a verdict.

The profile `p_t` (t = 0 … T-1) is the norm of ∂L/∂x_t, e.g. from
`rnn_stability.functional.gradient_flow`. `d = T - 1 - t` is the distance of step `t` from the
end of the sequence, where a sequence-level loss is applied. Plain gradient descent on a recurrence
multiplies the gradient by one Jacobian per step back, so `log p` is roughly linear in `d`: its slope is a
per-step decay rate, the classical picture of vanishing and exploding gradients (Bengio, Simard & Frasconi
1994; Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VERDICT_CODES", "FlowStatistics", "check_flow_rule", "flow_statistics"]

VERDICT_CODES: dict[str, int] = {"vanishing": -1, "healthy": 0, "exploding": 1}
"""Numeric code of each verdict, for logging as a scalar."""


@dataclass(frozen=True)
class FlowStatistics:
    """What a gradient-flow profile says about the recurrence.

    Attributes:
        decay_rate: minus the least-squares slope of `ln p` against the distance `d` from the end: the
            gradient shrinks by a factor `exp(-decay_rate)` per step back in time. Positive means it decays
            backwards (vanishing tendency), negative means it grows (exploding tendency). `nan` when fewer
            than two steps have a positive finite norm.
        memory_length: the distance back from the end to the earliest step whose norm is still at least
            `threshold` times the maximum, counting the last step as 1 (`0` if every norm is zero). It is
            the reach of the gradient, so one step of zero gradient (say, an input the model ignores) does
            not cut it short.
        verdict: `"exploding"`, `"vanishing"` or `"healthy"`, by the rule of `flow_statistics`.
        seq_len: the number of time steps `T`.
        max_norm: the largest norm in the profile.
    """

    decay_rate: float
    memory_length: int
    verdict: str
    seq_len: int
    max_norm: float

    @property
    def verdict_code(self) -> int:
        """`-1` vanishing, `0` healthy, `1` exploding (see `VERDICT_CODES`)."""
        return VERDICT_CODES[self.verdict]


def _check_fraction(name: str, value: float, *, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= high:
        raise ValueError(f"`{name}` must be a float in (0, {high:g}], got {value!r}.")
    return float(value)


def check_flow_rule(threshold: float, explode_factor: float, vanish_fraction: float) -> None:
    """Validate the arguments of the verdict rule (shared with the callback, which checks them early).

    Raises:
        ValueError: if `threshold` or `vanish_fraction` is not in (0, 1], or `explode_factor` is not a
            float greater than 1.
    """
    _check_fraction("threshold", threshold)
    _check_fraction("vanish_fraction", vanish_fraction)
    if (
        isinstance(explode_factor, bool)
        or not isinstance(explode_factor, (int, float))
        or not explode_factor > 1
    ):
        raise ValueError(f"`explode_factor` must be a float greater than 1, got {explode_factor!r}.")


def flow_statistics(
    profile: Tensor,
    threshold: float = 0.01,
    *,
    explode_factor: float = 10.0,
    vanish_fraction: float = 0.5,
) -> FlowStatistics:
    """Decay rate, effective memory length and verdict of a gradient-flow profile.

    The verdict rule, applied in this order:

    1. `"exploding"` if any norm is NaN or Inf, or if the fitted growth over the whole sequence,
       `exp(-decay_rate * (T - 1))`, exceeds `explode_factor` — the gradient grows more than that
       factor on its way back from the last step to the first;
    2. `"vanishing"` if `memory_length < vanish_fraction * T` — the gradient falls below
       `threshold` times its maximum before it has reached back over that fraction of the sequence
       (an all-zero profile is vanishing);
    3. `"healthy"` otherwise.

    Args:
        profile: 1-d tensor of per-time-step gradient norms, first time step first.
        threshold: fraction of the maximum norm that still counts as learning signal, in (0, 1].
        explode_factor: growth over the sequence above which the flow is exploding, greater than 1.
        vanish_fraction: fraction of `T` the memory length must reach to avoid "vanishing", in (0, 1].

    Returns:
        A `FlowStatistics`.

    Raises:
        TypeError: if `profile` is not a tensor.
        ValueError: if `profile` is not 1-d and non-empty, or an argument is out of range.

    Examples:
        >>> import torch
        >>> stats = flow_statistics(0.5 ** torch.arange(9.0, -1.0, -1.0))  # halves per step back, T = 10
        >>> round(stats.decay_rate, 4), stats.memory_length, stats.verdict
        (0.6931, 7, 'healthy')
        >>> flow_statistics(0.1 ** torch.arange(9.0, -1.0, -1.0)).verdict
        'vanishing'
        >>> flow_statistics(2.0 ** torch.arange(9.0, -1.0, -1.0)).verdict  # doubles per step back
        'exploding'
    """
    if not isinstance(profile, Tensor):
        raise TypeError(f"`profile` must be a Tensor, got {type(profile).__name__}.")
    if profile.dim() != 1 or profile.numel() == 0:
        raise ValueError(f"`profile` must be a non-empty 1-d tensor, got shape {tuple(profile.shape)}.")
    check_flow_rule(threshold, explode_factor, vanish_fraction)
    p = profile.detach().to(device="cpu", dtype=torch.float64)
    seq_len = p.numel()
    finite = torch.isfinite(p)
    max_norm = float(p[finite].max()) if bool(finite.any()) else float("nan")

    distance = torch.arange(seq_len - 1, -1, -1, dtype=torch.float64)
    usable = finite & (p > 0)
    if int(usable.sum()) >= 2:
        d, log_p = distance[usable], p[usable].log()
        d_centered = d - d.mean()
        slope = float((d_centered * (log_p - log_p.mean())).sum() / d_centered.square().sum())
        decay_rate = -slope
    else:
        decay_rate = float("nan")

    if max_norm > 0:
        above = torch.nonzero(finite & (p >= threshold * max_norm))
        memory_length = seq_len - int(above[0, 0])
    else:
        memory_length = 0

    if not bool(finite.all()):
        verdict = "exploding"
    elif not math.isnan(decay_rate) and -decay_rate * (seq_len - 1) > math.log(explode_factor):
        verdict = "exploding"
    elif memory_length < vanish_fraction * seq_len:
        verdict = "vanishing"
    else:
        verdict = "healthy"
    return FlowStatistics(
        decay_rate=decay_rate,
        memory_length=memory_length,
        verdict=verdict,
        seq_len=seq_len,
        max_norm=max_norm,
    )
