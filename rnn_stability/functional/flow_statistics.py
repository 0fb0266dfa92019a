"""Summary statistics of a temporal gradient-flow profile: decay rate, memory length and a verdict.

The profile `p_t` (t = 0 … T-1) is the norm of ∂L/∂x_t, e.g. from
`rnn_stability.functional.gradient_flow`. `d = T - 1 - t` is the distance of step `t` from the
end of the sequence, where a sequence-level loss is applied. Plain gradient descent on a recurrence
multiplies the gradient by one Jacobian per step back, so `log p` is roughly linear in `d`: its slope is a
per-step decay rate, the classical picture of vanishing and exploding gradients (Bengio, Simard & Frasconi
1994; Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks").

A profile also carries the task: ∂L/∂x_t is large at the inputs the loss depends on. A model that has
learnt to copy its first input has a profile that jumps by orders of magnitude at `t = 0` — without
anything exploding. The slope is therefore fitted robustly (Theil–Sen: the median of the slopes between
all pairs of steps), so a minority of steps that carry the task's signal cannot tip it; only growth that
compounds over most of the sequence, as the product of the Jacobians of an amplifying recurrence does,
counts as exploding.
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
        decay_rate: minus the Theil–Sen slope of `ln p` against the distance `d` from the end (the median
            of the slopes between all pairs of steps with a positive finite norm): the gradient typically
            shrinks by a factor `exp(-decay_rate)` per step back in time. Positive means it decays
            backwards (vanishing tendency), negative means it grows (exploding tendency). For an exact
            exponential it is the log of the per-step factor; a minority of steps (up to about 29 %) with
            a very different norm, such as the inputs a task depends on, does not move it. `nan` when
            fewer than two steps have a positive finite norm.
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

    def __post_init__(self) -> None:
        if self.verdict not in VERDICT_CODES:
            raise ValueError(f"`verdict` must be one of {tuple(VERDICT_CODES)}, got {self.verdict!r}.")
        for name in ("memory_length", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")

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


_MAX_FIT_POINTS = 1024
"""Longer profiles are fitted on this many evenly spaced steps, to bound the number of pairs."""


def _theil_sen_slope(x: Tensor, y: Tensor) -> float:
    """Median of the pairwise slopes `(y_j - y_i) / (x_j - x_i)` (Theil 1950, Sen 1968); `x` distinct."""
    if x.numel() > _MAX_FIT_POINTS:
        keep = torch.linspace(0, x.numel() - 1, _MAX_FIT_POINTS).round().long()
        x, y = x[keep], y[keep]
    i, j = torch.triu_indices(x.numel(), x.numel(), offset=1)
    return float(((y[j] - y[i]) / (x[j] - x[i])).median())


def _injected_after(output_profile: Tensor, seq_len: int) -> Tensor:
    """`Q_t = q_t + … + q_{T-1}`: the gradient norm injected at and after each step (NaN where none is)."""
    if (
        not isinstance(output_profile, Tensor)
        or output_profile.is_complex()
        or output_profile.dtype == torch.bool
    ):
        raise ValueError(
            f"`output_profile` must be a real tensor of norms, got {type(output_profile).__name__}."
        )
    if output_profile.shape != (seq_len,):
        raise ValueError(
            f"`output_profile` must have the shape of `profile`, ({seq_len},), got {tuple(output_profile.shape)}."
        )
    q = output_profile.detach().to(device="cpu", dtype=torch.float64)
    if bool((q < 0).any()):
        raise ValueError(
            f"`output_profile` must hold norms (>= 0), got a minimum of {float(q[q < 0].min())}."
        )
    after = q.flip(0).cumsum(0).flip(0)
    return after.masked_fill(after == 0, float("nan"))


def flow_statistics(
    profile: Tensor,
    threshold: float = 0.01,
    *,
    explode_factor: float = 10.0,
    vanish_fraction: float = 0.5,
    output_profile: Tensor | None = None,
) -> FlowStatistics:
    """Decay rate, effective memory length and verdict of a gradient-flow profile.

    A loss applied at every time step (a sequence-to-sequence task) injects gradient all along the sequence,
    and ∂L/∂x_t sums what it receives from every later step: with a recurrence that neither amplifies nor
    forgets, it grows linearly back from the end, which is not explosion either. Given `output_profile`,
    the norms `q_t` of the gradient injected at each step (‖∂L/∂y_t‖ of the module's output, as
    `rnn_stability.functional.GradientFlowRecorder` records it), the decay rate is fitted on
    `p_t / Q_t` with `Q_t = q_t + … + q_{T-1}`, the gradient injected at and after step `t`: what the
    recurrence did with it. A loss on the last step only makes `Q_t` constant and changes nothing.

    The verdict rule, applied in this order:

    1. `"exploding"` if any norm is NaN or Inf, or if the robustly fitted growth over the whole sequence,
       `exp(-decay_rate * (T - 1))`, exceeds `explode_factor` — the gradient compounds to more than that
       factor on its way back from the last step to the first. Growth confined to a few steps (the
       inputs the target depends on: the first input of a copy task, the marked values of the adding
       problem) is not explosion and does not count;
    2. `"vanishing"` if `memory_length < vanish_fraction * T` — the gradient falls below
       `threshold` times its maximum before it has reached back over that fraction of the sequence
       (an all-zero profile is vanishing);
    3. `"healthy"` otherwise.

    Args:
        profile: 1-d tensor of per-time-step gradient norms, first time step first.
        threshold: fraction of the maximum norm that still counts as learning signal, in (0, 1].
        explode_factor: growth over the sequence above which the flow is exploding, greater than 1.
        vanish_fraction: fraction of `T` the memory length must reach to avoid "vanishing", in (0, 1].
        output_profile: optional 1-d tensor of the same length, the norm of the gradient the loss injects
            at each step (see above); the memory length is read on `profile` either way.

    Returns:
        A `FlowStatistics`.

    Raises:
        TypeError: if `profile` is not a real (floating-point or integer) tensor.
        ValueError: if `profile` is not 1-d and non-empty, holds a negative norm, or an argument is out of
            range; if `output_profile` is not a tensor of norms of the same length.

    Examples:
        >>> import torch
        >>> stats = flow_statistics(0.5 ** torch.arange(9.0, -1.0, -1.0))  # halves per step back, T = 10
        >>> round(stats.decay_rate, 4), stats.memory_length, stats.verdict
        (0.6931, 7, 'healthy')
        >>> flow_statistics(0.1 ** torch.arange(9.0, -1.0, -1.0)).verdict
        'vanishing'
        >>> flow_statistics(2.0 ** torch.arange(9.0, -1.0, -1.0)).verdict  # doubles per step back
        'exploding'
        >>> flow_statistics(torch.tensor([1e4] + [1.0] * 9)).verdict  # only the first input matters
        'healthy'
        >>> d = torch.arange(39.0, -1.0, -1.0)  # a loss at each of 40 steps, each reaching back (x 1.02 a step)
        >>> summed = (d + 1) * 1.02**d
        >>> flow_statistics(summed).verdict, flow_statistics(summed, output_profile=torch.ones(40)).verdict
        ('exploding', 'healthy')
    """
    if not isinstance(profile, Tensor):
        raise TypeError(f"`profile` must be a Tensor, got {type(profile).__name__}.")
    if profile.is_complex() or profile.dtype == torch.bool:
        raise TypeError(f"`profile` must hold real norms, got dtype {profile.dtype}.")
    if profile.dim() != 1 or profile.numel() == 0:
        raise ValueError(f"`profile` must be a non-empty 1-d tensor, got shape {tuple(profile.shape)}.")
    check_flow_rule(threshold, explode_factor, vanish_fraction)
    p = profile.detach().to(device="cpu", dtype=torch.float64)
    if bool((p < 0).any()):  # norms are >= 0; a negative entry is not a profile (NaN stays: "exploding")
        raise ValueError(f"`profile` must hold norms (>= 0), got a minimum of {float(p[p < 0].min())}.")
    seq_len = p.numel()
    finite = torch.isfinite(p)
    max_norm = float(p[finite].max()) if bool(finite.any()) else float("nan")

    distance = torch.arange(seq_len - 1, -1, -1, dtype=torch.float64)
    relative = p / _injected_after(output_profile, seq_len) if output_profile is not None else p
    usable = torch.isfinite(relative) & (relative > 0)
    if int(usable.sum()) >= 2:
        decay_rate = -_theil_sen_slope(distance[usable], relative[usable].log())
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
