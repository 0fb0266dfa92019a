"""Hand-written backward for the GRU with the joint layer norm (`layer_norm="joint"`), fixed batch size.

The joint GRU normalises the sum of the input and recurrent projections of each gate block; the reset gate
multiplies the recurrent part of the candidate block first, as in torch's GRU:

    r = σ(γ_r LN(x_r + u_r) + s_r),  z = σ(γ_z LN(x_z + u_z) + s_z),
    n = tanh(γ_n LN(x_n + r u_n) + s_n + r b_hn),  h' = (1 - z) n + z h,

with `x = W_ih x_t` and `u = W_hh h` split into `(r, z, n)` blocks, `s = (b_ir + b_hr, b_iz + b_hz, b_in)`.
These are the formulas of `rnn_stability.nn.recurrence.gru_layer_norm_step` with `joint=True`. Laid out like
the functions of `rnn_stability.nn.fused`: the forward runs without recording, keeps what the backward needs,
and the backward computes the weight and gain gradients with one matmul / reduction over all steps.
First-order differentiable only. The joint LSTM needs no function of its own: it is a flag of
`rnn_stability.nn.fused.LSTMLayerNormFunction`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnn_stability.nn.fused_common import (
    _gain_folded_ln_backward,
    _gru_grad_h,
    _recurrent_weight_grad,
    _steps,
)

__all__ = ["GRUJointLayerNormFunction"]


class GRUJointLayerNormFunction(torch.autograd.Function):
    """GRU with the joint layer norm over `x_gates = W_ih x` of shape `(T, B, 3, H)`; returns `(out, h_n)`.

    Arguments as `rnn_stability.nn.fused.GRULayerNormFunction`: `(x_gates, h0, weight_hh, gain, shift,
    bias_hn, eps, joint, reverse)`, with `gain` the `(3, H)` gain of the normalised sums and `shift` the
    `(3, H)` bias added after them (`None` without biases).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_gates: Tensor,
        h0: Tensor,
        weight_hh: Tensor,
        gain: Tensor,
        shift: Tensor | None,
        bias_hn: Tensor | None,
        eps: float,
        joint: bool,
        reverse: bool,
    ) -> tuple[Tensor, Tensor]:
        assert joint, "the GRU without the joint layer norm runs GRULayerNormFunction"
        steps, batch, _, hidden = x_gates.shape
        w_hh_t = weight_hh.t()
        new = x_gates.new_empty
        out = new(steps, batch, hidden)
        rz = new(steps, batch, 2, hidden)
        cand = new(steps, batch, hidden)  # n
        u_n = new(steps, batch, hidden)  # (W_hh h)_n, which the reset gate multiplies
        hh = new(batch, 3, hidden)
        hh_flat = hh.view(batch, 3 * hidden)
        sums = new(batch, 2, hidden)
        a_rz = new(batch, 2, hidden)
        mixed, n_pre = new(batch, hidden), new(batch, hidden)
        gain_rz, gain_n = gain[:2], gain[2]
        shift_rz, shift_n = (shift[:2], shift[2]) if shift is not None else (None, None)
        x_rz_s, x_n_s = x_gates[:, :, :2].unbind(0), x_gates[:, :, 2].unbind(0)
        rz_s, r_s, z_s = rz.unbind(0), rz[:, :, 0].unbind(0), rz[:, :, 1].unbind(0)
        out_s, cand_s, u_n_s = out.unbind(0), cand.unbind(0), u_n.unbind(0)
        one = x_gates.new_ones(())
        normed_rz: list[Tensor] = [one] * steps
        rstd_rz: list[Tensor] = [one] * steps
        normed_n: list[Tensor] = [one] * steps
        rstd_n: list[Tensor] = [one] * steps
        shape = [hidden]
        h = h0
        for t in _steps(steps, reverse):
            torch.mm(h, w_hh_t, out=hh_flat)
            torch.add(x_rz_s[t], hh[:, :2], out=sums)
            normed_rz[t], _, rstd_rz[t] = torch.native_layer_norm(sums, shape, None, None, eps)
            if shift_rz is None:
                torch.mul(normed_rz[t], gain_rz, out=a_rz)
            else:
                torch.addcmul(shift_rz, normed_rz[t], gain_rz, out=a_rz)
            torch.sigmoid(a_rz, out=rz_s[t])
            r, z = r_s[t], z_s[t]
            u_n_s[t].copy_(hh[:, 2])
            torch.addcmul(x_n_s[t], r, u_n_s[t], out=mixed)
            normed_n[t], _, rstd_n[t] = torch.native_layer_norm(mixed, shape, None, None, eps)
            if shift_n is None:
                torch.mul(normed_n[t], gain_n, out=n_pre)
            else:
                torch.addcmul(shift_n, normed_n[t], gain_n, out=n_pre)
            if bias_hn is not None:
                n_pre.addcmul_(r, bias_hn)
            n = torch.tanh(n_pre, out=cand_s[t])
            h = torch.addcmul(n, z, torch.sub(h, n, out=mixed), out=out_s[t])
        ctx.save_for_backward(out, h0, weight_hh, gain, bias_hn, rz, cand, u_n)
        # Intermediate results (never returned), kept per step as the backward reads them per step.
        ctx.steps_saved = (normed_rz, rstd_rz, normed_n, rstd_n)
        ctx.has_shift = shift is not None
        ctx.reverse = reverse
        return out, h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor) -> tuple[Tensor | None, ...]:
        out, h0, weight_hh, gain, bias_hn, rz, cand, u_n = ctx.saved_tensors
        normed_rz, rstd_rz, normed_n, rstd_n = ctx.steps_saved
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = rz.shape
        new = rz.new_empty
        grad_x = new(steps, batch, 3, hidden)  # d(x_r + u_r), d(x_z + u_z), d(x_n + r u_n)
        grad_hh = new(steps, batch, 3 * hidden)
        grad_a = new(steps, batch, 3, hidden)  # gradients of the gain outputs (before the shifts)
        gain_rz, gain_n = gain[:2], gain[2]
        d_rz, scaled_rz, gain_rstd_rz = new(batch, 2, hidden), new(batch, 2, hidden), new(batch, 2, hidden)
        dn, dr, scaled_n, gain_rstd_n = (new(batch, hidden) for _ in range(4))
        zeros_rz, ones_rz = rz.new_zeros(batch, 2, 1), rz.new_ones(batch, 2, 1)
        zeros_n, ones_n = rz.new_zeros(batch, 1), rz.new_ones(batch, 1)
        bias_acc = rz.new_zeros(batch, hidden) if bias_hn is not None else None
        dh_bufs = (new(batch, hidden), new(batch, hidden))
        grad_out_s, grad_x_s, grad_hh_s, grad_a_s = (g.unbind(0) for g in (grad_out, grad_x, grad_hh, grad_a))
        rz_s, cand_s, u_n_s = rz.unbind(0), cand.unbind(0), u_n.unbind(0)
        one = rz.new_ones(())
        dhh: Tensor | None = None
        dh_prev = z_next = grad_hn
        for k, t in enumerate(_steps(steps, not reverse)):
            dh = _gru_grad_h(dh_bufs[k % 2], grad_hn, grad_out_s[t], dhh, dh_prev, z_next, weight_hh)
            earlier = t + 1 if reverse else t - 1
            h_prev = h0 if earlier < 0 or earlier >= steps else out[earlier]
            r, z = rz_s[t].unbind(1)
            n = cand_s[t]
            # dL/dn_pre = dh (1 - z) (1 - n²): the gradient of the candidate block's gain output.
            da_n = grad_a_s[t][:, 2]
            torch.mul(torch.mul(dh, 1 - z, out=dn), torch.addcmul(one, n, n, value=-1), out=da_n)
            if bias_acc is not None:
                bias_acc.addcmul_(da_n, r)
            du = _gain_folded_ln_backward(
                da_n, gain_n, rstd_n[t], normed_n[t], zeros_n, ones_n, gain_rstd_n, scaled_n
            )
            grad_x_s[t][:, 2].copy_(du)
            # dL/dr = du u_n (+ dL/dn_pre b_hn), dL/dz = dh (h_prev - n); through the sigmoids.
            torch.mul(du, u_n_s[t], out=dr)
            if bias_hn is not None:
                dr.addcmul_(da_n, bias_hn)
            torch.mul(dr, torch.addcmul(r, r, r, value=-1), out=d_rz[:, 0])
            torch.mul(torch.mul(dh, h_prev - n), torch.addcmul(z, z, z, value=-1), out=d_rz[:, 1])
            grad_a_s[t][:, :2].copy_(d_rz)
            d_sums = _gain_folded_ln_backward(
                d_rz, gain_rz, rstd_rz[t], normed_rz[t], zeros_rz, ones_rz, gain_rstd_rz, scaled_rz
            )
            grad_x_s[t][:, :2].copy_(d_sums)
            dhh_t = grad_hh_s[t].view(batch, 3, hidden)
            dhh_t[:, :2].copy_(d_sums)
            torch.mul(du, r, out=dhh_t[:, 2])
            dhh = grad_hh_s[t]
            dh_prev, z_next = dh, z
        assert dhh is not None
        grad_h0 = torch.addmm(dh_prev * z_next, dhh, weight_hh)
        need = ctx.needs_input_grad
        grad_w_hh = grad_gain = grad_shift = grad_bias_hn = None
        if need[2]:
            grad_w_hh = _recurrent_weight_grad(grad_hh, dhh, out, h0, reverse)
        if need[3]:
            grad_gain = torch.cat(
                [
                    (grad_a[:, :, :2] * torch.stack(normed_rz, 0)).sum((0, 1)),
                    (grad_a[:, :, 2] * torch.stack(normed_n, 0)).sum((0, 1)).unsqueeze(0),
                ],
                0,
            )
        if ctx.has_shift and need[4]:
            grad_shift = grad_a.sum((0, 1))
        if bias_acc is not None and need[5]:
            grad_bias_hn = bias_acc.sum(0)
        return grad_x, grad_h0, grad_w_hh, grad_gain, grad_shift, grad_bias_hn, None, None, None
