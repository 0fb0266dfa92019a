"""Helpers shared by the hand-written-backward loops (`rnn_stability.nn.fused`, `fused_gru`, `fused_joint`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "_INPUT_GRAD_ONLY",
    "_LN_BACKWARD",
    "_gain_folded_ln_backward",
    "_gru_grad_h",
    "_recurrent_weight_grad",
    "_steps",
]

# Input gradient of `native_layer_norm` in one kernel (called with `output_mask=[True, False, False]`).
_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward.default


#: `native_layer_norm_backward`'s output mask: only the input gradient.
_INPUT_GRAD_ONLY = [True, False, False]


def _gain_folded_ln_backward(
    grad: Tensor,
    gain: Tensor,
    rstd: Tensor,
    normed: Tensor,
    zeros: Tensor,
    ones: Tensor,
    gain_rstd: Tensor,
    scaled: Tensor,
) -> Tensor:
    """Input gradient of `gain * layer_norm(x)` (last dimension) from the saved normalised values `normed`.

    The layer norm's backward runs on `normed` (mean `zeros`, rstd `ones`) with `gain * rstd` folded into
    `grad`; `gain_rstd` and `scaled` are buffers for those products.
    """
    torch.mul(gain, rstd, out=gain_rstd)
    return _LN_BACKWARD(
        torch.mul(grad, gain_rstd, out=scaled),
        normed,
        normed.shape[-1:],
        zeros,
        ones,
        None,
        None,
        _INPUT_GRAD_ONLY,
    )[0]


def _gru_grad_h(
    out: Tensor,
    grad_hn: Tensor,
    grad_out: Tensor,
    dhh: Tensor | None,
    dh_prev: Tensor,
    z_next: Tensor,
    weight_hh: Tensor,
) -> Tensor:
    """`dL/dh_t` of a GRU step into `out`: `grad_out` plus, from the step after it, `dh z` through the update
    gate and `dhh W_hh` through the recurrent matmul (`grad_hn` instead for the step processed first)."""
    if dhh is None:
        return torch.add(grad_hn, grad_out, out=out)
    return torch.addcmul(grad_out, dh_prev, z_next, out=out).addmm_(dhh, weight_hh)


def _steps(num_steps: int, reverse: bool) -> range:
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


def _recurrent_weight_grad(grad_hh: Tensor, first: Tensor, out: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """`dW_hh = sum_t dhh_t^T h_{t-1}`: one matmul over all steps but the first, whose `h_{t-1}` is `h0`.

    `grad_hh` is `(T, B, G * H)` in time order and `first` its slice for the step processed first.
    """
    steps, batch = grad_hh.shape[:2]
    grad = torch.mm(first.t(), h0)
    if steps > 1:
        later, earlier = (slice(0, -1), slice(1, None)) if reverse else (slice(1, None), slice(0, -1))
        rows = (steps - 1) * batch
        grad.addmm_(
            grad_hh[later].reshape(rows, grad_hh.size(-1)).t(), out[earlier].reshape(rows, out.size(-1))
        )
    return grad
