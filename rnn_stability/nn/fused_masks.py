"""Recurrent dropout and zoneout in the hand-written-backward loops of `rnn_stability.nn.fused`.

Recurrent dropout (Gal & Ghahramani 2016, "A Theoretically Grounded Application of Dropout in Recurrent Neural
Networks"): `W_hh (m h_{t-1})` with one `(B, W)` mask per sequence. Zoneout (Krueger et al. 2017, "Zoneout:
Regularizing RNNs by Randomly Preserving Hidden Activations"): after each step `s_t = s_new + k (s_{t-1} -
s_new)`, `k` the step's 0/1 keep mask or, in eval, the probability. The formulas of
`rnn_stability.nn.recurrence._layer_norm_loop`; these helpers are their forward and backward pieces.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["add_kept_", "blend_", "blend_into", "keep_at", "masked_states", "new_state_grad"]

#: A zoneout argument: `(T, B, W)` keep masks (time order), the probability (eval), or `None` (off).
Zone = Tensor | float | None


def keep_at(zone: Tensor | float, t: int) -> Tensor | float:
    """The keep values of step `t`."""
    return zone if isinstance(zone, float) else zone[t]


def blend_(new: Tensor, old: Tensor, keep: Tensor | float) -> Tensor:
    """`new + keep (old - new)` into `new`."""
    if isinstance(keep, float):
        return new.add_(old - new, alpha=keep)
    return new.addcmul_(keep, old - new)


def blend_into(out: Tensor, new: Tensor, old: Tensor, keep: Tensor | float) -> Tensor:
    """`new + keep (old - new)` into `out`."""
    if isinstance(keep, float):
        return torch.add(new, old - new, alpha=keep, out=out)
    return torch.addcmul(new, keep, old - new, out=out)


def add_kept_(grad: Tensor, keep: Tensor | float, other: Tensor) -> Tensor:
    """`grad += keep other` in place: what a zoned state passes straight to the state before it."""
    if isinstance(keep, float):
        return grad.add_(other, alpha=keep)
    return grad.addcmul_(keep, other)


def new_state_grad(out: Tensor, grad: Tensor, keep: Tensor | float) -> Tensor:
    """`(1 - keep) grad` into `out`: the gradient of the new state from that of the zoned one."""
    if isinstance(keep, float):
        return torch.mul(grad, 1.0 - keep, out=out)
    return torch.addcmul(grad, keep, grad, value=-1, out=out)


def masked_states(out: Tensor, h0: Tensor, recurrent: Tensor | None) -> tuple[Tensor, Tensor]:
    """The states that entered `W_hh`: `(out, h0)` times the recurrent-dropout mask when there is one."""
    if recurrent is None:
        return out, h0
    return out * recurrent, h0 * recurrent
