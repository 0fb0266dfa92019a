"""Time loops of the layer-normalised LSTM and GRU (one layer, one direction).

The input projection and its layer norm do not depend on the recurrent state, so callers compute them for all
time steps at once and pass the per-step slices `xs`; only the recurrent projection stays in the loop. The
loops accept shrinking batches (`PackedSequence` order: batch sizes non-increasing over time), so packed and
padded input share one code path. They are differentiated by autograd; for a constant batch size the modules
use the faster hand-written backward of `rnn_stability.nn.fused` instead. (A TorchScript version of these
loops was tried and dropped: its optimised autodiff graph returned wrong gradients after the profiling runs.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from rnn_stability.nn.layer_norm import gate_layer_norm

__all__ = [
    "gru_input_gates",
    "lstm_gate_shift",
    "lstm_input_gates",
    "gru_layer_norm_sequence",
    "gru_layer_norm_step",
    "lstm_layer_norm_sequence",
    "lstm_layer_norm_step",
]

# Arguments of the steps after the input gates and the state: (weight_hh, gain_hh, cell_weight, cell_bias,
# weight_hr, eps) for the LSTM, (weight_hh, gain_hh, bias_hn, eps) for the GRU.
LSTMStepParams = tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, float]
GRUStepParams = tuple[Tensor, Tensor, Tensor | None, float]


def lstm_gate_shift(bias_ih: Tensor | None, bias_hh: Tensor | None, gain_ih: Tensor) -> Tensor | None:
    """`b_ih + b_hh` shaped like the gain `(4, H)`: both LSTM biases sit outside the normalisations."""
    return (bias_ih + bias_hh).view_as(gain_ih) if bias_ih is not None and bias_hh is not None else None


def lstm_input_gates(
    x: Tensor, weight_ih: Tensor, gain_ih: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None, eps: float
) -> Tensor:
    """The state-independent part of the LSTM gates, `gain_ih * LN(W_ih x) + b_ih + b_hh`, shape `(..., 4, H)`.

    Both biases sit outside the normalisation, so they are added here, once for all time steps.
    """
    return gate_layer_norm(F.linear(x, weight_ih), gain_ih, eps, lstm_gate_shift(bias_ih, bias_hh, gain_ih))


def gru_input_gates(
    x: Tensor, weight_ih: Tensor, gain_ih: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None, eps: float
) -> tuple[Tensor, Tensor | None]:
    """The state-independent part of the GRU gates and the bias `b_hn` that stays inside the reset product.

    Returns `(gain_ih * LN(W_ih x) + b_ih + (b_hr, b_hz, 0), b_hn)`; the first has shape `(..., 3, H)`.
    """
    projection = F.linear(x, weight_ih)
    if bias_ih is None or bias_hh is None:
        return gate_layer_norm(projection, gain_ih, eps), None
    bias_ih = bias_ih.view_as(gain_ih)
    bias_hh = bias_hh.view_as(gain_ih)
    outside = torch.cat([bias_ih[:2] + bias_hh[:2], bias_ih[2:]], 0)
    return gate_layer_norm(projection, gain_ih, eps, outside), bias_hh[2]


def lstm_layer_norm_step(
    x_gates: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    gain_hh: Tensor,
    cell_weight: Tensor,
    cell_bias: Tensor | None,
    weight_hr: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """One step of the layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization").

    `x_gates` is `gain_ih * LN(W_ih x) + b_ih + b_hh` of shape `(B, 4, H)`; then
    `(i, f, g, o) = x_gates + gain_hh * LN(W_hh h)`, `c' = σ(f) c + σ(i) tanh(g)`,
    `h' = σ(o) tanh(LN_c(c'))` (`h' = W_hr h'` with a projection). Returns `(h', c')`.
    """
    hidden_size = gain_hh.size(1)
    hh = torch.mm(h, weight_hh.t()).view(h.size(0), 4, hidden_size)
    gates = torch.addcmul(x_gates, F.layer_norm(hh, [hidden_size], None, None, eps), gain_hh)
    i, f, g, o = gates.unbind(1)
    c_new = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
    h_new = torch.sigmoid(o) * torch.tanh(F.layer_norm(c_new, [hidden_size], cell_weight, cell_bias, eps))
    if weight_hr is not None:
        h_new = torch.mm(h_new, weight_hr.t())
    return h_new, c_new


def gru_layer_norm_step(
    x_gates: Tensor,
    h: Tensor,
    weight_hh: Tensor,
    gain_hh: Tensor,
    bias_hn: Tensor | None,
    eps: float,
) -> Tensor:
    """One step of the layer-normalised GRU.

    `x_gates` is `gain_ih * LN(W_ih x) + b_ih + (b_hr, b_hz, 0)` of shape `(B, 3, H)`; with
    `a = gain_hh * LN(W_hh h)`: `r = σ(x_r + a_r)`, `z = σ(x_z + a_z)`, `n = tanh(x_n + r (a_n + b_hn))`,
    `h' = (1 - z) n + z h`. Returns `h'`.
    """
    hidden_size = gain_hh.size(1)
    hh = torch.mm(h, weight_hh.t()).view(h.size(0), 3, hidden_size)
    hh = F.layer_norm(hh, [hidden_size], None, None, eps) * gain_hh
    r, z = torch.sigmoid(x_gates[:, :2] + hh[:, :2]).unbind(1)
    hn = hh[:, 2]
    if bias_hn is not None:
        hn = hn + bias_hn
    n = torch.tanh(torch.addcmul(x_gates[:, 2], r, hn))
    return torch.addcmul(n, z, h - n)


def _layer_norm_loop(
    step: Callable[..., Any],
    xs: list[Tensor],
    state0: tuple[Tensor, ...],
    params: tuple[Any, ...],
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run `step(x, *state, *params)` over `xs` (oldest first); returns `(outputs, final state)`.

    `step` returns the new state, or the new hidden state alone when `state0` has one tensor. Rows leave
    the state when the batch shrinks and are put back at the end. `outputs` is the concatenation of the
    per-step hidden states in time order (packed layout).
    """
    steps = len(xs)
    single = len(state0) == 1
    outs: list[Tensor] = []
    finished: list[tuple[Tensor, ...]] = []
    state = tuple(s[: xs[steps - 1].size(0)] for s in state0) if reverse else state0
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        x = xs[t]
        batch = x.size(0)
        size = state[0].size(0)
        if batch > size:
            state = tuple(torch.cat([s, s0[size:batch]], 0) for s, s0 in zip(state, state0, strict=True))
        elif batch < size:
            finished.append(tuple(s[batch:] for s in state))
            state = tuple(s[:batch] for s in state)
        new = step(x, *state, *params)
        state = (new,) if single else new
        outs.append(state[0])
    if reverse:
        outs.reverse()
    if len(finished) > 0:
        finished.reverse()
        state = tuple(
            torch.cat([s, *rows], 0) for s, rows in zip(state, zip(*finished, strict=True), strict=True)
        )
    return torch.cat(outs, 0), state


def lstm_layer_norm_sequence(
    xs: list[Tensor], h0: Tensor, c0: Tensor, params: LSTMStepParams, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run `lstm_layer_norm_step` over `xs` (oldest first); returns `(outputs, h_n, c_n)`.

    `params` are the step's arguments after `(x_gates, h, c)`. `outputs` is the concatenation of the
    per-step hidden states in time order (packed layout).
    """
    out, (h, c) = _layer_norm_loop(lstm_layer_norm_step, xs, (h0, c0), params, reverse)
    return out, h, c


def gru_layer_norm_sequence(
    xs: list[Tensor], h0: Tensor, params: GRUStepParams, reverse: bool
) -> tuple[Tensor, Tensor]:
    """Run `gru_layer_norm_step` over `xs` (oldest first); returns `(outputs, h_n)`.

    `params` are the step's arguments after `(x_gates, h)`.
    """
    out, (h,) = _layer_norm_loop(gru_layer_norm_step, xs, (h0,), params, reverse)
    return out, h
