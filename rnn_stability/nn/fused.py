"""Hand-written backward for the layer-normalised LSTM / GRU time loops (fixed batch size, one direction).

Autograd through a step-by-step loop records ~20 small ops per step and accumulates the recurrent weight
gradient one step at a time. These ``autograd.Function`` s run the forward loop without recording, keep the
few tensors the backward needs, and in the backward compute the gate gradients step by step but the weight
and gain gradients with one matmul / reduction over all steps. Formulas are those of
:func:`rnn_stability.nn.recurrence.lstm_layer_norm_step` / :func:`~rnn_stability.nn.recurrence.gru_layer_norm_step`
(Ba, Kiros & Hinton (2016), "Layer Normalization"). Like torch's cuDNN RNN kernels they are differentiable
once (no double backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["GRULayerNormFunction", "LSTMLayerNormFunction", "layer_norm_backward"]


def layer_norm_backward(grad: Tensor, normalised: Tensor, rstd: Tensor) -> Tensor:
    """Gradient of ``x`` through ``(x - mean) * rstd`` over the last dim, given the normalised ``x``.

    Example::

        >>> x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        >>> y = torch.nn.functional.layer_norm(x, (5,))
        >>> g = torch.randn(3, 5, dtype=torch.float64)
        >>> (expected,) = torch.autograd.grad(y, x, g)
        >>> rstd = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt()
        >>> torch.allclose(layer_norm_backward(g, y.detach(), rstd.detach()), expected)
        True
    """
    mean_grad = grad.mean(-1, keepdim=True)
    mean_proj = (grad * normalised).mean(-1, keepdim=True)
    return rstd * (grad - mean_grad - normalised * mean_proj)


def _steps(num_steps: int, reverse: bool) -> range:
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


def _previous_hidden(out: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """``h_{t-1}`` for every step, in time order (``h_{t+1}`` for the reverse direction)."""
    if reverse:
        return torch.cat([out[1:], h0.unsqueeze(0)], 0)
    return torch.cat([h0.unsqueeze(0), out[:-1]], 0)


class LSTMLayerNormFunction(torch.autograd.Function):
    """Layer-normalised LSTM over ``x_gates`` of shape ``(T, B, 4, H)``; returns ``(out, h_n, c_n)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_gates: Tensor,
        h0: Tensor,
        c0: Tensor,
        weight_hh: Tensor,
        gain_hh: Tensor,
        cell_weight: Tensor,
        cell_bias: Tensor | None,
        weight_hr: Tensor | None,
        eps: float,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        steps, batch, _, hidden = x_gates.shape
        out = x_gates.new_empty(steps, batch, h0.size(-1))
        normed_hh = torch.empty_like(x_gates)
        rstd_hh = x_gates.new_empty(steps, batch, 4, 1)
        acts = torch.empty_like(x_gates)
        cells = x_gates.new_empty(steps, batch, hidden)
        normed_c = x_gates.new_empty(steps, batch, hidden)
        rstd_c = x_gates.new_empty(steps, batch, 1)
        tanh_c = x_gates.new_empty(steps, batch, hidden)
        w_hh_t = weight_hh.t()
        h, c = h0, c0
        for t in _steps(steps, reverse):
            hh = torch.mm(h, w_hh_t).view(batch, 4, hidden)
            normed, _, rstd = torch.native_layer_norm(hh, [hidden], None, None, eps)
            normed_hh[t] = normed
            rstd_hh[t] = rstd
            gates = torch.addcmul(x_gates[t], normed, gain_hh)
            act = acts[t]
            torch.sigmoid(gates, out=act)
            act[:, 2] = torch.tanh(gates[:, 2])
            i, f, g, o = act.unbind(1)
            c = torch.addcmul(f * c, i, g)
            cells[t] = c
            c_hat, _, r_c = torch.native_layer_norm(c, [hidden], None, None, eps)
            normed_c[t] = c_hat
            rstd_c[t] = r_c
            read = c_hat * cell_weight
            if cell_bias is not None:
                read = read + cell_bias
            torch.tanh(read, out=tanh_c[t])
            h = o * tanh_c[t]
            if weight_hr is not None:
                h = torch.mm(h, weight_hr.t())
            out[t] = h
        ctx.save_for_backward(
            out,
            h0,
            c0,
            weight_hh,
            gain_hh,
            cell_weight,
            weight_hr,
            normed_hh,
            rstd_hh,
            acts,
            cells,
            normed_c,
            rstd_c,
            tanh_c,
        )
        ctx.has_cell_bias = cell_bias is not None
        ctx.reverse = reverse
        last = 0 if reverse else steps - 1
        return out, out[last].clone(), cells[last].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor) -> tuple[Tensor | None, ...]:
        (
            out,
            h0,
            c0,
            weight_hh,
            gain_hh,
            cell_weight,
            weight_hr,
            normed_hh,
            rstd_hh,
            acts,
            cells,
            normed_c,
            rstd_c,
            tanh_c,
        ) = ctx.saved_tensors
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = acts.shape
        grad_gates = torch.empty_like(acts)
        grad_hh = torch.empty_like(acts)
        grad_read = torch.empty_like(cells)
        grad_h_all = torch.empty_like(out) if weight_hr is not None else grad_out
        dh = grad_hn.clone()
        dc = grad_cn.clone()
        for t in _steps(steps, not reverse):
            dh_t = dh + grad_out[t]
            if weight_hr is not None:
                grad_h_all[t] = dh_t
                dm = torch.mm(dh_t, weight_hr)
            else:
                dm = dh_t
            i, f, g, o = acts[t].unbind(1)
            tc = tanh_c[t]
            d_read = dm * o * (1 - tc * tc)
            grad_read[t] = d_read
            dc = dc + layer_norm_backward(d_read * cell_weight, normed_c[t], rstd_c[t])
            prev_c = c0 if t == (steps - 1 if reverse else 0) else cells[t + 1 if reverse else t - 1]
            dg = grad_gates[t]
            dg[:, 0] = dc * g * i * (1 - i)
            dg[:, 1] = dc * prev_c * f * (1 - f)
            dg[:, 2] = dc * i * (1 - g * g)
            dg[:, 3] = dm * tc * o * (1 - o)
            dc = dc * f
            dhh = layer_norm_backward(dg * gain_hh, normed_hh[t], rstd_hh[t])
            grad_hh[t] = dhh
            dh = torch.mm(dhh.view(batch, 4 * hidden), weight_hh)
        flat = steps * batch
        need = ctx.needs_input_grad
        prev_h = _previous_hidden(out, h0, reverse)
        grad_w_hh = torch.mm(grad_hh.view(flat, 4 * hidden).t(), prev_h.view(flat, -1)) if need[3] else None
        grad_gain = (grad_gates * normed_hh).sum((0, 1)) if need[4] else None
        grad_cell_w = (grad_read * normed_c).sum((0, 1)) if need[5] else None
        grad_cell_b = grad_read.sum((0, 1)) if ctx.has_cell_bias and need[6] else None
        grad_w_hr = None
        if weight_hr is not None and need[7]:
            m = acts[:, :, 3] * tanh_c
            grad_w_hr = torch.mm(grad_h_all.view(flat, -1).t(), m.reshape(flat, hidden))
        return grad_gates, dh, dc, grad_w_hh, grad_gain, grad_cell_w, grad_cell_b, grad_w_hr, None, None


class GRULayerNormFunction(torch.autograd.Function):
    """Layer-normalised GRU over ``x_gates`` of shape ``(T, B, 3, H)``; returns ``(out, h_n)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_gates: Tensor,
        h0: Tensor,
        weight_hh: Tensor,
        gain_hh: Tensor,
        bias_hn: Tensor | None,
        eps: float,
        reverse: bool,
    ) -> tuple[Tensor, Tensor]:
        steps, batch, _, hidden = x_gates.shape
        out = x_gates.new_empty(steps, batch, hidden)
        normed_hh = torch.empty_like(x_gates)
        rstd_hh = x_gates.new_empty(steps, batch, 3, 1)
        rz_all = x_gates.new_empty(steps, batch, 2, hidden)
        n_all = x_gates.new_empty(steps, batch, hidden)
        hn_all = x_gates.new_empty(steps, batch, hidden)
        w_hh_t = weight_hh.t()
        h = h0
        for t in _steps(steps, reverse):
            hh = torch.mm(h, w_hh_t).view(batch, 3, hidden)
            normed, _, rstd = torch.native_layer_norm(hh, [hidden], None, None, eps)
            normed_hh[t] = normed
            rstd_hh[t] = rstd
            a_h = normed * gain_hh
            x = x_gates[t]
            rz = rz_all[t]
            torch.sigmoid(x[:, :2] + a_h[:, :2], out=rz)
            r, z = rz.unbind(1)
            hn = a_h[:, 2] if bias_hn is None else a_h[:, 2] + bias_hn
            hn_all[t] = hn
            n = torch.tanh(torch.addcmul(x[:, 2], r, hn))
            n_all[t] = n
            h = torch.addcmul(n, z, h - n)
            out[t] = h
        ctx.save_for_backward(out, h0, weight_hh, gain_hh, normed_hh, rstd_hh, rz_all, n_all, hn_all)
        ctx.has_bias = bias_hn is not None
        ctx.reverse = reverse
        return out, out[0 if reverse else steps - 1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor) -> tuple[Tensor | None, ...]:
        out, h0, weight_hh, gain_hh, normed_hh, rstd_hh, rz_all, n_all, hn_all = ctx.saved_tensors
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = normed_hh.shape
        prev_h = _previous_hidden(out, h0, reverse)
        grad_gates = torch.empty_like(normed_hh)
        grad_ah = torch.empty_like(normed_hh)
        grad_hh = torch.empty_like(normed_hh)
        dh = grad_hn.clone()
        for t in _steps(steps, not reverse):
            dh_t = dh + grad_out[t]
            r, z = rz_all[t].unbind(1)
            n = n_all[t]
            dn = dh_t * (1 - z) * (1 - n * n)
            dg = grad_gates[t]
            dg[:, 2] = dn
            dg[:, 0] = dn * hn_all[t] * r * (1 - r)
            dg[:, 1] = dh_t * (prev_h[t] - n) * z * (1 - z)
            da = grad_ah[t]
            da[:, :2] = dg[:, :2]
            da[:, 2] = dn * r
            dhh = layer_norm_backward(da * gain_hh, normed_hh[t], rstd_hh[t])
            grad_hh[t] = dhh
            dh = torch.addmm(dh_t * z, dhh.view(batch, 3 * hidden), weight_hh)
        flat = steps * batch
        need = ctx.needs_input_grad
        grad_w_hh = (
            torch.mm(grad_hh.view(flat, 3 * hidden).t(), prev_h.view(flat, hidden)) if need[2] else None
        )
        grad_gain = (grad_ah * normed_hh).sum((0, 1)) if need[3] else None
        grad_bias_hn = grad_ah[:, :, 2].sum((0, 1)) if ctx.has_bias and need[4] else None
        return grad_gates, dh, grad_w_hh, grad_gain, grad_bias_hn, None, None


_ = FunctionCtx  # re-exported type for readers of the signatures above
