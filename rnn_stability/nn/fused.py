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
from torch.autograd.function import once_differentiable

__all__ = ["GRULayerNormFunction", "LSTMLayerNormFunction"]


def _steps(num_steps: int, reverse: bool) -> range:
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


def _previous(values: Tensor, initial: Tensor, reverse: bool) -> Tensor:
    """``v_{t-1}`` for every step of time-ordered ``values`` (``v_{t+1}`` for the reverse direction)."""
    if reverse:
        return torch.cat([values[1:], initial.unsqueeze(0)], 0)
    return torch.cat([initial.unsqueeze(0), values[:-1]], 0)


def _stack_in_time_order(values: list[Tensor], reverse: bool) -> Tensor:
    if reverse:
        values.reverse()
    return torch.stack(values, 0)


def _ln_input_grad(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None) -> Tensor:
    """Input gradient of ``native_layer_norm`` over the last dim, in one fused kernel.

    Example::

        >>> x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        >>> y, mean, rstd = torch.native_layer_norm(x, [5], None, None, 1e-5)
        >>> g = torch.randn(3, 5, dtype=torch.float64)
        >>> (expected,) = torch.autograd.grad(y, x, g)
        >>> torch.allclose(_ln_input_grad(g, x.detach(), mean, rstd, None), expected)
        True
    """
    return torch.ops.aten.native_layer_norm_backward(
        grad, x, [x.size(-1)], mean, rstd, weight, None, [True, False, False]
    )[0]


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
        w_hh_t = weight_hh.t()
        w_hr_t = weight_hr.t() if weight_hr is not None else None
        saved: list[list[Tensor]] = [[] for _ in range(10)]
        h, c = h0, c0
        for t in _steps(steps, reverse):
            hh = torch.mm(h, w_hh_t).view(batch, 4, hidden)
            normed, mean, rstd = torch.native_layer_norm(hh, [hidden], None, None, eps)
            gates = torch.addcmul(x_gates[t], normed, gain_hh)
            act = torch.sigmoid(gates)
            g = torch.tanh(gates[:, 2])
            i, f, _, o = act.unbind(1)
            c = torch.addcmul(f * c, i, g)
            read, mean_c, rstd_c = torch.native_layer_norm(c, [hidden], cell_weight, cell_bias, eps)
            tanh_c = torch.tanh(read)
            h = o * tanh_c
            if w_hr_t is not None:
                h = torch.mm(h, w_hr_t)
            for store, value in zip(
                saved, (h, hh, mean, rstd, act, g, c, mean_c, rstd_c, tanh_c), strict=True
            ):
                store.append(value)
        out, *tensors = (_stack_in_time_order(values, reverse) for values in saved)
        ctx.save_for_backward(out, h0, c0, weight_hh, gain_hh, cell_weight, cell_bias, weight_hr, *tensors)
        ctx.reverse = reverse
        return out, h.clone(), c.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor) -> tuple[Tensor | None, ...]:
        (out, h0, c0, weight_hh, gain_hh, cell_weight, cell_bias, weight_hr, *saved) = ctx.saved_tensors
        hh, mean, rstd, act, g, cells, mean_c, rstd_c, tanh_c = saved
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = act.shape
        # Everything that does not depend on the incoming gradient, for all steps at once.
        sig_grad = act * (1 - act)
        i, f, o = act[:, :, 0], act[:, :, 1], act[:, :, 3]
        prev_c = _previous(cells, c0, reverse)
        coef_c = torch.stack([g * sig_grad[:, :, 0], prev_c * sig_grad[:, :, 1], i * (1 - g * g)], 2)
        coef_o = tanh_c * sig_grad[:, :, 3]
        coef_read = o * (1 - tanh_c * tanh_c)
        grads_gates: list[Tensor] = []
        grads_hh: list[Tensor] = []
        grads_read: list[Tensor] = []
        grads_h: list[Tensor] = []
        dh, dc = grad_hn, grad_cn
        for t in _steps(steps, not reverse):
            dh_t = dh + grad_out[t]
            if weight_hr is not None:
                grads_h.append(dh_t)
                dm = torch.mm(dh_t, weight_hr)
            else:
                dm = dh_t
            d_read = dm * coef_read[t]
            grads_read.append(d_read)
            dc = dc + _ln_input_grad(d_read, cells[t], mean_c[t], rstd_c[t], cell_weight)
            dg = torch.cat([dc.unsqueeze(1) * coef_c[t], (dm * coef_o[t]).unsqueeze(1)], 1)
            grads_gates.append(dg)
            dc = dc * f[t]
            dhh = _ln_input_grad(dg * gain_hh, hh[t], mean[t], rstd[t], None)
            grads_hh.append(dhh)
            dh = torch.mm(dhh.view(batch, 4 * hidden), weight_hh)
        backward_order = not reverse
        grad_gates = _stack_in_time_order(grads_gates, backward_order)
        flat = steps * batch
        need = ctx.needs_input_grad
        grad_w_hh = grad_gain = grad_cell_w = grad_cell_b = grad_w_hr = None
        if need[3]:
            grad_hh = _stack_in_time_order(grads_hh, backward_order).view(flat, 4 * hidden)
            grad_w_hh = torch.mm(grad_hh.t(), _previous(out, h0, reverse).view(flat, -1))
        if need[4]:
            grad_gain = (grad_gates * (hh - mean) * rstd).sum((0, 1))
        grad_read = _stack_in_time_order(grads_read, backward_order)
        if need[5]:
            grad_cell_w = (grad_read * (cells - mean_c) * rstd_c).sum((0, 1))
        if cell_bias is not None and need[6]:
            grad_cell_b = grad_read.sum((0, 1))
        if weight_hr is not None and need[7]:
            grad_h = _stack_in_time_order(grads_h, backward_order).view(flat, -1)
            grad_w_hr = torch.mm(grad_h.t(), (o * tanh_c).reshape(flat, hidden))
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
        w_hh_t = weight_hh.t()
        saved: list[list[Tensor]] = [[] for _ in range(7)]
        h = h0
        for t in _steps(steps, reverse):
            hh = torch.mm(h, w_hh_t).view(batch, 3, hidden)
            normed, mean, rstd = torch.native_layer_norm(hh, [hidden], None, None, eps)
            a_h = normed * gain_hh
            x = x_gates[t]
            rz = torch.sigmoid(x[:, :2] + a_h[:, :2])
            hn = a_h[:, 2] if bias_hn is None else a_h[:, 2] + bias_hn
            n = torch.tanh(torch.addcmul(x[:, 2], rz[:, 0], hn))
            h = torch.addcmul(n, rz[:, 1], h - n)
            for store, value in zip(saved, (h, hh, mean, rstd, rz, hn, n), strict=True):
                store.append(value)
        out, *tensors = (_stack_in_time_order(values, reverse) for values in saved)
        ctx.save_for_backward(out, h0, weight_hh, gain_hh, *tensors)
        ctx.has_bias = bias_hn is not None
        ctx.reverse = reverse
        return out, h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor) -> tuple[Tensor | None, ...]:
        out, h0, weight_hh, gain_hh, hh, mean, rstd, rz, hn, n = ctx.saved_tensors
        reverse: bool = ctx.reverse
        steps, batch, _, hidden = hh.shape
        prev_h = _previous(out, h0, reverse)
        r, z = rz[:, :, 0], rz[:, :, 1]
        # Every gate gradient is dh_t times a coefficient known from the forward pass.
        coef_n = (1 - z) * (1 - n * n)
        coef_r = coef_n * hn * r * (1 - r)
        coef_z = (prev_h - n) * z * (1 - z)
        coef_gates = torch.stack([coef_r, coef_z, coef_n], 2)
        coef_a = torch.stack([coef_r, coef_z, coef_n * r], 2)
        coef_hh = coef_a * gain_hh
        grads_h: list[Tensor] = []
        grads_hh: list[Tensor] = []
        dh = grad_hn
        for t in _steps(steps, not reverse):
            dh_t = dh + grad_out[t]
            grads_h.append(dh_t)
            dhh = _ln_input_grad(dh_t.unsqueeze(1) * coef_hh[t], hh[t], mean[t], rstd[t], None)
            grads_hh.append(dhh)
            dh = torch.addmm(dh_t * z[t], dhh.view(batch, 3 * hidden), weight_hh)
        backward_order = not reverse
        grad_h = _stack_in_time_order(grads_h, backward_order).unsqueeze(2)
        grad_gates = grad_h * coef_gates
        flat = steps * batch
        need = ctx.needs_input_grad
        grad_w_hh = grad_gain = grad_bias_hn = None
        if need[2]:
            grad_hh = _stack_in_time_order(grads_hh, backward_order).view(flat, 3 * hidden)
            grad_w_hh = torch.mm(grad_hh.t(), prev_h.view(flat, hidden))
        if need[3] or need[4]:
            grad_a = grad_h * coef_a
            if need[3]:
                grad_gain = (grad_a * (hh - mean) * rstd).sum((0, 1))
            if ctx.has_bias and need[4]:
                grad_bias_hn = grad_a[:, :, 2].sum((0, 1))
        return grad_gates, dh, grad_w_hh, grad_gain, grad_bias_hn, None, None
