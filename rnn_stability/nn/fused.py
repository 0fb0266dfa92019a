"""Hand-written backward for the layer-normalised LSTM / GRU time loops (fixed batch size, one direction).

Autograd through a step-by-step loop records ~20 small ops per step and accumulates the recurrent weight
gradient one step at a time. These `autograd.Function` s run the forward loop without recording, keep the
few tensors the backward needs, and in the backward compute the gate gradients step by step but the weight
and gain gradients with one matmul / reduction over all steps. On CPU at the sizes these layers run (a step is
a `(B, G * H)` block of a few hundred kB), the cost besides the matmuls is per-call dispatch and memory
traffic, so both loops make few calls per step, write into preallocated buffers and keep per-step scratch
tensors in cache. Formulas are those of
`rnn_stability.nn.recurrence.lstm_layer_norm_step` / `rnn_stability.nn.recurrence.gru_layer_norm_step`
(Ba, Kiros & Hinton (2016), "Layer Normalization"), for every `layer_norm` variant but the joint GRU, whose
candidate block is normalised after the reset gate (`rnn_stability.nn.fused_joint`). Like torch's cuDNN RNN
kernels they are differentiable once (no double backward). On CPU in float32/float64 the LSTM runs the C++ loop of `rnn_stability.nn.native`
instead; this one serves the other devices and dtypes and the case where the C++ loop cannot be built.
Both loops here also take the recurrent-dropout mask and zoneout's keep masks (or, in eval, its probability)
of `rnn_stability.nn.fused_masks`, forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnn_stability.nn.fused_common import (
    _INPUT_GRAD_ONLY,
    _LN_BACKWARD,
    _gain_folded_ln_backward,
    _recurrent_weight_grad,
    _steps,
)
from rnn_stability.nn.fused_gru import GRULayerNormFunction
from rnn_stability.nn.fused_masks import (
    Zone,
    add_kept_,
    blend_,
    blend_into,
    keep_at,
    masked_states,
    new_state_grad,
)

__all__ = ["GRULayerNormFunction", "LSTMLayerNormFunction"]


class LSTMLayerNormFunction(torch.autograd.Function):
    """Layer-normalised LSTM over `x_gates` of shape `(T, B, 4, H)`; returns `(out, h_n, c_n)`.

    `x_gates` is what `rnn_stability.nn.recurrence.lstm_input_gates` gives: with `joint`, the gates are
    `gain * LN(x_gates + W_hh h) + shift`, else `x_gates + gain * LN(W_hh h)` (and `shift` is `None`).

    Per-step results go straight into preallocated `(T, ...)` buffers (`out=`, with the per-step views
    made once by `unbind`), so nothing is indexed or stacked inside or after the loop. On this scale (a
    `(B, 4H)` step is a few hundred kB) every ATen call costs several microseconds of dispatch, so the loops
    keep the number of calls per step low. The forward also stores the coefficients that turn `dc` / `dh`
    into gate gradients, computed while the step's activations are still in cache.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_gates: Tensor,
        h0: Tensor,
        c0: Tensor,
        weight_hh: Tensor,
        gain_hh: Tensor,
        shift: Tensor | None,
        cell_weight: Tensor,
        cell_bias: Tensor | None,
        weight_hr: Tensor | None,
        eps: float,
        joint: bool,
        reverse: bool,
        recurrent: Tensor | None = None,
        zone_h: Zone = None,
        zone_c: Zone = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        steps, batch, _, hidden = x_gates.shape
        needs_grad = any(ctx.needs_input_grad)
        w_hh_t = weight_hh.t()
        w_hr_t = weight_hr.t() if weight_hr is not None else None
        new = x_gates.new_empty
        out = new(steps, batch, h0.size(-1))
        cells = new(steps, batch, hidden)
        # Per step: coefficients of the (i, f, g, o) gate gradients and of the LN_c output gradient, and σ(f).
        coef = new(steps, batch, 4, hidden)
        coef_read = new(steps, batch, hidden)
        forget = new(steps, batch, hidden)
        pre_proj = new(steps, batch, hidden) if w_hr_t is not None else None
        hh = new(batch, 4, hidden)
        gates = new(batch, 4, hidden)
        act = new(batch, 4, hidden)
        slope = new(batch, 4, hidden)
        one = x_gates.new_ones(())
        g_pre = gates[:, 2]
        i, f, g, o = act.unbind(1)
        sd_i, sd_f, sd_g, sd_o = slope.unbind(1)
        x_s, cells_s, out_s = x_gates.unbind(0), cells.unbind(0), out.unbind(0)
        hh_flat = hh.view(batch, 4 * hidden)
        coef_s = [coef[:, :, k].unbind(0) for k in range(4)]
        coef_read_s, forget_s = coef_read.unbind(0), forget.unbind(0)
        pre_proj_s = pre_proj.unbind(0) if pre_proj is not None else ()
        normed: list[Tensor] = [one] * steps
        rstd: list[Tensor] = [one] * steps
        mean_c: list[Tensor] = [one] * steps
        rstd_c: list[Tensor] = [one] * steps
        h, c = h0, c0
        # Recurrent dropout and zoneout (`rnn_stability.nn.fused_masks`): the masked state, the zoned cells.
        h_rec = new(batch, h0.size(-1)) if recurrent is not None else None
        zoned = (new(batch, hidden), new(batch, hidden)) if zone_c is not None else ()
        shape = [hidden]
        for k, t in enumerate(_steps(steps, reverse)):
            h_prev = h
            torch.mm(h if recurrent is None else torch.mul(h, recurrent, out=h_rec), w_hh_t, out=hh_flat)
            if joint:
                hh.add_(x_s[t])
            normed_t, _, rstd[t] = torch.native_layer_norm(hh, shape, None, None, eps)
            normed[t] = normed_t
            if not joint:
                torch.addcmul(x_s[t], normed_t, gain_hh, out=gates)
            elif shift is None:
                torch.mul(normed_t, gain_hh, out=gates)
            else:
                torch.addcmul(shift, normed_t, gain_hh, out=gates)
            torch.sigmoid(gates, out=act)
            torch.tanh(g_pre, out=g)
            c_prev = c
            c = torch.addcmul(f * c_prev, i, g, out=cells_s[t])
            read, mean_c[t], rstd_c[t] = torch.native_layer_norm(c, shape, cell_weight, cell_bias, eps)
            tc = torch.tanh(read, out=read)
            if w_hr_t is None:
                h = torch.mul(o, tc, out=out_s[t])
            else:
                h = torch.mm(torch.mul(o, tc, out=pre_proj_s[t]), w_hr_t, out=out_s[t])
            if needs_grad:
                torch.addcmul(act, act, act, value=-1, out=slope)
                torch.addcmul(one, g, g, value=-1, out=sd_g)
                torch.mul(g, sd_i, out=coef_s[0][t])
                torch.mul(c_prev, sd_f, out=coef_s[1][t])
                torch.mul(i, sd_g, out=coef_s[2][t])
                torch.mul(tc, sd_o, out=coef_s[3][t])
                torch.mul(o, torch.addcmul(one, tc, tc, value=-1, out=read), out=coef_read_s[t])
                forget_s[t].copy_(f)
            if zone_h is not None:
                h = blend_(h, h_prev, keep_at(zone_h, t))
            if zone_c is not None:
                c = blend_into(zoned[k % 2], c, c_prev, keep_at(zone_c, t))
        ctx.masks = (recurrent, zone_h, zone_c)
        ctx.save_for_backward(
            out, h0, weight_hh, gain_hh, cell_weight, weight_hr, cells, coef, coef_read, forget, pre_proj
        )
        # Intermediate results (never returned), kept per step as the backward reads them per step.
        ctx.steps_saved = (normed, rstd, mean_c, rstd_c)
        ctx.has_cell_bias = cell_bias is not None
        ctx.joint, ctx.reverse = joint, reverse
        return out, h.clone(), c.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor) -> tuple[Tensor | None, ...]:
        out, h0, weight_hh, gain_hh, cell_weight, weight_hr, cells, coef, coef_read, forget, pre_proj = (
            ctx.saved_tensors
        )
        normed, rstd, mean_c, rstd_c = ctx.steps_saved
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = coef.shape
        new = coef.new_empty
        grad_gates = new(steps, batch, 4, hidden)
        grad_hh = new(steps, batch, 4 * hidden)
        grad_read = new(steps, batch, hidden)
        # dL/dh_t of every step is only kept for the projection's weight gradient; else one buffer is reused.
        grad_h = new(steps if weight_hr is not None else 1, batch, out.size(-1))
        gain_acc = coef.new_zeros(batch, 4, hidden)
        scaled = new(batch, 4, hidden)
        gain_rstd = new(batch, 4, hidden)
        zeros, ones = coef.new_zeros(batch, 4, 1), coef.new_ones(batch, 4, 1)
        grad_out_s, grad_read_s = grad_out.unbind(0), grad_read.unbind(0)
        grad_h_s = grad_h.unbind(0) if weight_hr is not None else grad_h.expand(steps, -1, -1).unbind(0)
        grad_gates_s, grad_hh_s = grad_gates.unbind(0), grad_hh.unbind(0)
        dg_cell_s, dg_o_s = grad_gates[:, :, :3].unbind(0), grad_gates[:, :, 3].unbind(0)
        coef_cell_s, coef_o_s = coef[:, :, :3].unbind(0), coef[:, :, 3].unbind(0)
        coef_read_s, forget_s, cells_s = coef_read.unbind(0), forget.unbind(0), cells.unbind(0)
        shape = [hidden]
        dhh: Tensor | None = None
        dc = new(batch, hidden)
        dc_gates = dc.unsqueeze(1)
        f_next: Tensor | None = None
        # Recurrent dropout and zoneout: dL/dh_t and dL/dc_t of the zoned states (ds, dcs; two slots each,
        # the later step's is carried past its zoneout); grad_h_s then holds the new states' dL/dh_t.
        recurrent, zone_h, zone_c = ctx.masks
        regular = recurrent is not None or zone_h is not None
        ds_bufs = (new(batch, out.size(-1)), new(batch, out.size(-1))) if zone_h is not None else ()
        dcs_bufs = (new(batch, hidden), new(batch, hidden)) if zone_c is not None else ()
        ds = dcs = torch.empty(0)
        later = -1
        for k, t in enumerate(_steps(steps, not reverse)):
            if regular:
                ds = ds_bufs[k % 2] if zone_h is not None else grad_h_s[t]
                if dhh is None:
                    torch.add(grad_hn, grad_out_s[t], out=ds)
                elif recurrent is not None:
                    torch.addcmul(grad_out_s[t], torch.mm(dhh, weight_hh), recurrent, out=ds)
                else:
                    torch.addmm(grad_out_s[t], dhh, weight_hh, out=ds)
                if zone_h is not None and later >= 0:
                    add_kept_(ds, keep_at(zone_h, later), ds_bufs[(k + 1) % 2])
                dh_t = ds if zone_h is None else new_state_grad(grad_h_s[t], ds, keep_at(zone_h, t))
            elif dhh is None:
                dh_t = torch.add(grad_hn, grad_out_s[t], out=grad_h_s[t])
            else:
                dh_t = torch.addmm(grad_out_s[t], dhh, weight_hh, out=grad_h_s[t])
            dm = dh_t if weight_hr is None else torch.mm(dh_t, weight_hr)
            d_read = torch.mul(dm, coef_read_s[t], out=grad_read_s[t])
            d_cell = _LN_BACKWARD(
                d_read, cells_s[t], shape, mean_c[t], rstd_c[t], cell_weight, None, _INPUT_GRAD_ONLY
            )[0]
            if zone_c is not None:  # dcs: dL/dc_t of the zoned cell; dc: that of the new cell
                dcs = dcs_bufs[k % 2]
                if f_next is None:
                    dcs.copy_(grad_cn)
                else:
                    torch.mul(dcs_bufs[(k + 1) % 2], keep_at(zone_c, later), out=dcs).addcmul_(dc, f_next)
                d_cell = d_cell + new_state_grad(dc, dcs, keep_at(zone_c, t))
                dc.copy_(d_cell)
            elif f_next is None:
                torch.add(d_cell, grad_cn, out=dc)
            else:
                torch.addcmul(d_cell, dc, f_next, out=dc)
            f_next = forget_s[t]
            later = t
            torch.mul(dc_gates, coef_cell_s[t], out=dg_cell_s[t])
            torch.mul(dm, coef_o_s[t], out=dg_o_s[t])
            dg = grad_gates_s[t]
            normed_t = normed[t]
            gain_acc.addcmul_(dg, normed_t)
            dhh = _gain_folded_ln_backward(
                dg, gain_hh, rstd[t], normed_t, zeros, ones, gain_rstd, scaled
            ).view(batch, 4 * hidden)
            grad_hh_s[t].copy_(dhh)
        assert dhh is not None and f_next is not None
        grad_h0 = torch.mm(dhh, weight_hh)
        grad_c0 = dc * f_next
        if recurrent is not None:
            grad_h0.mul_(recurrent)
        if zone_h is not None:
            add_kept_(grad_h0, keep_at(zone_h, later), ds)
        if zone_c is not None:
            grad_c0 = torch.mul(dcs, keep_at(zone_c, later)).addcmul_(dc, f_next)
        need = ctx.needs_input_grad
        grad_w_hh = grad_gain = grad_shift = grad_cell_w = grad_cell_b = grad_w_hr = None
        if need[3]:
            grad_w_hh = _recurrent_weight_grad(grad_hh, dhh, *masked_states(out, h0, recurrent), reverse)
        if need[4]:
            grad_gain = gain_acc.sum(0)
        if need[5]:
            grad_shift = grad_gates.sum((0, 1))
        if need[6]:
            xhat_c = (cells - torch.stack(mean_c, 0)) * torch.stack(rstd_c, 0)
            grad_cell_w = (grad_read * xhat_c).sum((0, 1))
        if ctx.has_cell_bias and need[7]:
            grad_cell_b = grad_read.sum((0, 1))
        if weight_hr is not None and need[8]:
            flat = steps * batch
            grad_w_hr = torch.mm(grad_h.view(flat, grad_h.size(-1)).t(), pre_proj.view(flat, hidden))
        # Joint: x_gates enters the normalisation beside W_hh h, so its gradient is that of W_hh h.
        grad_x = grad_hh.view_as(grad_gates) if ctx.joint else grad_gates
        return (
            grad_x,
            grad_h0,
            grad_c0,
            grad_w_hh,
            grad_gain,
            grad_shift,
            grad_cell_w,
            grad_cell_b,
            grad_w_hr,
            None,
            None,
            None,
            None,
            None,
            None,
        )
