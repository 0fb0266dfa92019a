"""Hand-written backward for the layer-normalised GRU time loop (`"recurrent"`, `"separate"` and `"scaled"`;
fixed batch size, one direction), laid out like `rnn_stability.nn.fused.LSTMLayerNormFunction` (see that
module); the joint GRU runs `rnn_stability.nn.fused_joint`.
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
from rnn_stability.nn.fused_masks import (
    Zone,
    add_kept_,
    blend_,
    keep_at,
    masked_states,
    new_state_grad,
)

__all__ = ["GRULayerNormFunction"]


class GRULayerNormFunction(torch.autograd.Function):
    """Layer-normalised GRU over `x_gates` of shape `(T, B, 3, H)`, `W_hh h` normalised on its own (the
    `"recurrent"` and `"separate"` variants); returns `(out, h_n)`.

    Laid out like `LSTMLayerNormFunction`: preallocated buffers, per-step views made once, and the
    coefficients that turn `dh` into gate gradients computed in the forward while the step is in cache.
    Takes the arguments of `rnn_stability.nn.fused_joint.GRUJointLayerNormFunction` (`shift` is `None` and
    `joint` is false here: the shift is already in `x_gates`).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_gates: Tensor,
        h0: Tensor,
        weight_hh: Tensor,
        gain_hh: Tensor,
        shift: Tensor | None,
        bias_hn: Tensor | None,
        eps: float,
        joint: bool,
        reverse: bool,
        recurrent: Tensor | None = None,
        zone_h: Zone = None,
    ) -> tuple[Tensor, Tensor]:
        assert shift is None and not joint, "the joint GRU runs GRUJointLayerNormFunction"
        steps, batch, _, hidden = x_gates.shape
        needs_grad = any(ctx.needs_input_grad)
        w_hh_t = weight_hh.t()
        new = x_gates.new_empty
        out = new(steps, batch, hidden)
        rz = new(steps, batch, 2, hidden)
        # Per step: d(x_r, x_z, x_n) / dh' and d(a_n) / dh' (a = gain_hh * LN(W_hh h)).
        coef = new(steps, batch, 3, hidden)
        coef_nr = new(steps, batch, hidden)
        hh = new(batch, 3, hidden)
        hh_flat = hh.view(batch, 3 * hidden)
        a = new(batch, 3, hidden)
        a_rz, hn = a[:, :2], a[:, 2]
        s_rz = new(batch, 2, hidden)
        n_pre, n, diff, one_m_n2, scratch = (new(batch, hidden) for _ in range(5))
        slope = new(batch, 2, hidden)
        sd_r, sd_z = slope.unbind(1)
        one = x_gates.new_ones(())
        x_rz_s, x_n_s = x_gates[:, :, :2].unbind(0), x_gates[:, :, 2].unbind(0)
        rz_s, r_s, z_s = rz.unbind(0), rz[:, :, 0].unbind(0), rz[:, :, 1].unbind(0)
        coef_r_s, coef_z_s, coef_n_s = (coef[:, :, k].unbind(0) for k in range(3))
        out_s, coef_nr_s = out.unbind(0), coef_nr.unbind(0)
        normed: list[Tensor] = [one] * steps
        rstd: list[Tensor] = [one] * steps
        shape = [hidden]
        h = h0
        h_rec = new(batch, hidden) if recurrent is not None else None  # recurrent dropout: m h enters W_hh
        for t in _steps(steps, reverse):
            h_prev = h
            torch.mm(h if recurrent is None else torch.mul(h, recurrent, out=h_rec), w_hh_t, out=hh_flat)
            normed_t, _, rstd[t] = torch.native_layer_norm(hh, shape, None, None, eps)
            normed[t] = normed_t
            torch.mul(normed_t, gain_hh, out=a)
            if bias_hn is not None:
                hn.add_(bias_hn)
            rz_t = torch.sigmoid(torch.add(x_rz_s[t], a_rz, out=s_rz), out=rz_s[t])
            r, z = r_s[t], z_s[t]
            torch.tanh(torch.addcmul(x_n_s[t], r, hn, out=n_pre), out=n)
            torch.sub(h, n, out=diff)
            h = torch.addcmul(n, z, diff, out=out_s[t])
            if needs_grad:
                torch.addcmul(one, n, n, value=-1, out=one_m_n2)
                coef_n = torch.addcmul(one_m_n2, one_m_n2, z, value=-1, out=coef_n_s[t])
                torch.addcmul(rz_t, rz_t, rz_t, value=-1, out=slope)
                torch.mul(torch.mul(coef_n, hn, out=scratch), sd_r, out=coef_r_s[t])
                torch.mul(diff, sd_z, out=coef_z_s[t])
                torch.mul(coef_n, r, out=coef_nr_s[t])
            if zone_h is not None:
                h = blend_(h, h_prev, keep_at(zone_h, t))
        ctx.masks = (recurrent, zone_h)
        ctx.save_for_backward(out, h0, weight_hh, gain_hh, rz, coef, coef_nr)
        # Intermediate results (never returned), kept per step as the backward reads them per step.
        ctx.steps_saved = (normed, rstd)
        ctx.has_bias = bias_hn is not None
        ctx.reverse = reverse
        return out, h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor) -> tuple[Tensor | None, ...]:
        out, h0, weight_hh, gain_hh, rz, coef, coef_nr = ctx.saved_tensors
        normed, rstd = ctx.steps_saved
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = coef.shape
        new = coef.new_empty
        grad_gates = new(steps, batch, 3, hidden)
        grad_hh = new(steps, batch, 3 * hidden)
        gain_acc = coef.new_zeros(batch, 3, hidden)
        bias_acc = coef.new_zeros(batch, hidden) if ctx.has_bias else None
        grad_a = new(batch, 3, hidden)
        grad_a_rz, grad_a_n = grad_a[:, :2], grad_a[:, 2]
        gain_rstd = new(batch, 3, hidden)
        scaled = new(batch, 3, hidden)
        zeros, ones = coef.new_zeros(batch, 3, 1), coef.new_ones(batch, 3, 1)
        dh_bufs = (new(batch, hidden), new(batch, hidden))
        dh_gates = tuple(buf.unsqueeze(1) for buf in dh_bufs)
        grad_out_s, grad_gates_s, grad_hh_s = grad_out.unbind(0), grad_gates.unbind(0), grad_hh.unbind(0)
        grad_gates_rz_s = grad_gates[:, :, :2].unbind(0)
        coef_s, coef_nr_s, z_s = coef.unbind(0), coef_nr.unbind(0), rz[:, :, 1].unbind(0)
        dhh: Tensor | None = None
        dh_prev = z_next = grad_hn
        # Recurrent dropout and zoneout: ds is dL/dh_t of the zoned state (two slots, the later step's carried
        # past its zoneout); dh_bufs then hold the new states' dL/dh_t.
        recurrent, zone_h = ctx.masks
        ds_bufs = (new(batch, hidden), new(batch, hidden)) if zone_h is not None else ()
        ds = torch.empty(0)
        later = -1
        for k, t in enumerate(_steps(steps, not reverse)):
            if recurrent is None and zone_h is None:
                dh = _gru_grad_h(dh_bufs[k % 2], grad_hn, grad_out_s[t], dhh, dh_prev, z_next, weight_hh)
            else:
                ds = ds_bufs[k % 2] if zone_h is not None else dh_bufs[k % 2]
                if dhh is None:
                    torch.add(grad_hn, grad_out_s[t], out=ds)
                else:
                    torch.addcmul(grad_out_s[t], dh_prev, z_next, out=ds)
                    if recurrent is not None:
                        ds.addcmul_(torch.mm(dhh, weight_hh), recurrent)
                    else:
                        ds.addmm_(dhh, weight_hh)
                    if zone_h is not None:
                        add_kept_(ds, keep_at(zone_h, later), ds_bufs[(k + 1) % 2])
                dh = ds if zone_h is None else new_state_grad(dh_bufs[k % 2], ds, keep_at(zone_h, t))
            later = t
            torch.mul(dh_gates[k % 2], coef_s[t], out=grad_gates_s[t])
            grad_a_rz.copy_(grad_gates_rz_s[t])
            torch.mul(dh, coef_nr_s[t], out=grad_a_n)
            normed_t = normed[t]
            gain_acc.addcmul_(grad_a, normed_t)
            if bias_acc is not None:
                bias_acc.add_(grad_a_n)
            dhh = _gain_folded_ln_backward(
                grad_a, gain_hh, rstd[t], normed_t, zeros, ones, gain_rstd, scaled
            ).view(batch, 3 * hidden)
            grad_hh_s[t].copy_(dhh)
            dh_prev, z_next = dh, z_s[t]
        assert dhh is not None
        grad_h0 = torch.addmm(dh_prev * z_next, dhh, weight_hh)
        if recurrent is not None:
            grad_h0 = torch.addcmul(dh_prev * z_next, torch.mm(dhh, weight_hh), recurrent)
        if zone_h is not None:
            add_kept_(grad_h0, keep_at(zone_h, later), ds)
        need = ctx.needs_input_grad
        grad_w_hh = grad_gain = grad_bias_hn = None
        if need[2]:
            grad_w_hh = _recurrent_weight_grad(grad_hh, dhh, *masked_states(out, h0, recurrent), reverse)
        if need[3]:
            grad_gain = gain_acc.sum(0)
        if bias_acc is not None and need[5]:
            grad_bias_hn = bias_acc.sum(0)
        return grad_gates, grad_h0, grad_w_hh, grad_gain, None, grad_bias_hn, None, None, None, None, None
