"""The C++ time loop of the layer-normalised GRU (`csrc/gru_layer_norm.cpp`), built with the LSTM's loop.

One library holds both loops (`rnn_stability.nn.native`: just-in-time build, cache, lock, and the fallback to
the PyTorch loops of `rnn_stability.nn.fused` / `rnn_stability.nn.fused_joint` when it cannot be built or
`RNN_STABILITY_NATIVE=0`). The formulas are those of `rnn_stability.nn.recurrence.gru_layer_norm_step`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from rnn_stability.nn.native import native_ops, zoneout_argument

__all__ = ["GRULayerNormLayerNative", "gru_shift"]


def gru_shift(
    bias_ih: torch.Tensor | None, bias_hh: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`(shift, b_hn)`: `shift = (b_ir + b_hr, b_iz + b_hz, b_in)` of shape `(3, H)`, the biases outside the
    reset product, and `b_hn`, the one inside it; `(None, None)` without biases."""
    if bias_ih is None or bias_hh is None:
        return None, None
    b_ih, b_hh = bias_ih.view(3, -1), bias_hh.view(3, -1)
    return torch.cat([b_ih[:2] + b_hh[:2], b_ih[2:]], 0), b_hh[2]


class GRULayerNormLayerNative(torch.autograd.Function):
    """One layer-normalised GRU direction in C++ from the layer input; returns `(out, h_n)`.

    Takes `x` `(T, B, in)` (all sequences of one length), `weight_ih` `(3H, in)`, `gain_ih` (`"separate"`
    and `"scaled"`, else `None`), `shift` and `bias_hn` of `gru_shift` (or `None`), `h0` `(B, H)`, `weight_hh`,
    `gain_hh` (the gain of `LN(W_hh h)`, or of the normalised sums for `"joint"`), `eps`, `reverse`, the
    variant and `grad`, `torch.is_grad_enabled()` where it is applied (false keeps nothing for a backward).
    The C++ op computes `x W_ih^T` itself and its gradients a chunk of steps at a time. First-order
    differentiable only (`once_differentiable`). With `weight_ih=None`, `x` is the projection itself,
    `(T, B, 3H)` (the batch-normalised one of the `batch_norm` option; not with `"separate"` / `"scaled"`).

    The variant `"none"` normalises nothing (torch's GRU step; `gain_hh` an empty tensor, `gain_ih` `None`),
    for the regularisers without layer norm. Optional: `recurrent_mask`, a `(B, H)` recurrent-dropout mask on
    `h_{t-1}` where it enters `W_hh` (Gal & Ghahramani 2016; the update `z h_{t-1}` keeps the unmasked state,
    as in Keras), and `zone_h`, zoneout (Krueger et al. 2017): `(T, B, H)` 0/1 keep masks in time order or
    the probability `p` (a float or 0-dim tensor: eval's expectation). The masks get no gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight_ih: torch.Tensor | None,
        gain_ih: torch.Tensor | None,
        shift: torch.Tensor | None,
        bias_hn: torch.Tensor | None,
        h0: torch.Tensor,
        weight_hh: torch.Tensor,
        gain_hh: torch.Tensor,
        eps: float,
        reverse: bool,
        variant: str,
        grad: bool,
        recurrent_mask: torch.Tensor | None = None,
        zone_h: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        save = grad and any(ctx.needs_input_grad)
        ops = native_ops()
        assert ops is not None
        inputs = (x, weight_ih, gain_ih, shift, bias_hn, h0, weight_hh, gain_hh)
        masks = (recurrent_mask, zoneout_argument(zone_h, x))
        out, h_n, xp_saved, *per_step = ops.gru_ln_forward(*inputs, eps, reverse, save, variant, *masks)
        if save:
            # In the order gru_ln_backward takes them after the output gradients.
            ctx.save_for_backward(
                x, weight_ih, xp_saved, gain_ih, shift, bias_hn, h0, weight_hh, gain_hh, out, *per_step
            )
        ctx.eps, ctx.reverse, ctx.variant, ctx.masks = eps, reverse, variant, masks
        ctx.ops = ops  # the backward runs the kernel that ran forward
        return out, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor, grad_hn: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        grads = ctx.ops.gru_ln_backward(
            grad_out, grad_hn, *saved[:10], saved[10:], ctx.eps, ctx.reverse, ctx.variant, *ctx.masks
        )
        # grads follow forward's tensor arguments; those not given (None) get None.
        given = (
            True,
            saved[1] is not None,
            saved[3] is not None,
            saved[4] is not None,
            saved[5] is not None,
            True,
            True,
            True,
        )
        need = ctx.needs_input_grad
        result = tuple(
            g if n and present else None for g, n, present in zip(grads, need, given, strict=False)
        )
        return result + (None,) * 6
