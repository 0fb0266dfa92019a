"""Time loops of the layer-normalised LSTM and GRU (one layer, one direction).

The input projection (with its own layer norm for `"separate"` and `"scaled"`) does not depend on the recurrent state, so
callers compute it for all time steps at once and pass the per-step slices `xs`; only the recurrent projection
(and, for `"joint"`, the normalisation of the sum) stays in the loop. The
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

from rnn_stability.nn.layer_norm import gate_layer_norm, scaled_gate_layer_norm
from rnn_stability.nn.regularization import zoneout_blend

__all__ = [
    "gru_input_gates",
    "lstm_gate_shift",
    "lstm_input_gates",
    "gru_layer_norm_sequence",
    "gru_layer_norm_step",
    "lstm_layer_norm_sequence",
    "lstm_layer_norm_step",
]

# Arguments of the steps after the input gates and the state: (weight_hh, gain, joint_shift, cell_weight,
# cell_bias, weight_hr, eps, joint) for the LSTM, (weight_hh, gain, joint_shift, bias_hn, eps, joint) for the GRU.
# `gain` multiplies LN(W_hh h), or LN(W_ih x + W_hh h) when `joint`; `joint_shift` is the bias added after that
# joint normalisation (the other variants add it to the input gates, once for all steps).
# `gain=None` (and `cell_weight=None`): no layer norm, the loops of the regularisers without `layer_norm`.
LSTMStepParams = tuple[
    Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None, float, bool
]
GRUStepParams = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, float, bool]


def lstm_gate_shift(bias_ih: Tensor | None, bias_hh: Tensor | None, gain: Tensor) -> Tensor | None:
    """`b_ih + b_hh` shaped like a gate gain `(4, H)`: both LSTM biases sit outside the normalisations."""
    return (bias_ih + bias_hh).view_as(gain) if bias_ih is not None and bias_hh is not None else None


def _projection(
    x: Tensor, weight_ih: Tensor, shift: Tensor | None, norm: Callable[[Tensor], Tensor] | None
) -> Tensor:
    """`norm(W_ih x) + shift` (or `W_ih x + shift` without `norm`), flat: shape `(..., G * H)`."""
    if norm is None:
        return F.linear(x, weight_ih, None if shift is None else shift.reshape(-1))
    projection = norm(F.linear(x, weight_ih))
    return projection if shift is None else projection + shift.reshape(-1)


def _normalised_input(
    x: Tensor, weight_ih: Tensor, gain_ih: Tensor, eps: float, shift: Tensor | None, scaled: bool
) -> Tensor:
    """`gain_ih * LN(W_ih x) + shift`, times the input's magnitude when `scaled`: shape `(..., G, H)`."""
    if scaled:
        return scaled_gate_layer_norm(F.linear(x, weight_ih), x, gain_ih, eps, shift)
    return gate_layer_norm(F.linear(x, weight_ih), gain_ih, eps, shift)


def lstm_input_gates(
    x: Tensor,
    weight_ih: Tensor,
    gain_ih: Tensor | None,
    shift: Tensor | None,
    eps: float,
    joint: bool,
    norm: Callable[[Tensor], Tensor] | None = None,
    scaled: bool = False,
) -> Tensor:
    """The part of the LSTM gates computed for all time steps at once, shape `(..., 4, H)`.

    `gain_ih * LN(W_ih x) + shift` (`"separate"`: `gain_ih` given; times the input's mean absolute value
    with `scaled`, the `"scaled"` variant), `W_ih x + shift` (`"recurrent"`, or no layer norm), or `W_ih x`
    alone (`joint`: the step normalises it together with `W_hh h` and adds `shift` after). `norm` (the batch
    norm of the `batch_norm` option) replaces `W_ih x` by `norm(W_ih x)`.
    """
    if gain_ih is not None:
        return _normalised_input(x, weight_ih, gain_ih, eps, shift, scaled)
    return _projection(x, weight_ih, None if joint else shift, norm).unflatten(-1, (4, -1))


def gru_input_gates(
    x: Tensor,
    weight_ih: Tensor,
    gain_ih: Tensor | None,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    eps: float,
    joint: bool,
    norm: Callable[[Tensor], Tensor] | None = None,
    scaled: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The part of the GRU gates computed for all time steps at once, the joint shift and `b_hn`.

    With `shift = (b_ir + b_hr, b_iz + b_hz, b_in)` (the biases outside the reset product): returns
    `(gain_ih * LN(W_ih x) + shift, None, b_hn)` (`"separate"`; times the input's mean absolute value with
    `scaled`, the `"scaled"` variant), `(W_ih x + shift, None, b_hn)`
    (`"recurrent"`, or no layer norm) or `(W_ih x, shift, b_hn)` (`joint`); the first has shape
    `(..., 3, H)`. `norm` (the batch norm of the `batch_norm` option) replaces `W_ih x` by `norm(W_ih x)`.
    """
    shift: Tensor | None = None
    bias_hn: Tensor | None = None
    if bias_ih is not None and bias_hh is not None:
        b_ih, b_hh = bias_ih.view(3, -1), bias_hh.view(3, -1)
        shift, bias_hn = torch.cat([b_ih[:2] + b_hh[:2], b_ih[2:]], 0), b_hh[2]
    if gain_ih is not None:
        return _normalised_input(x, weight_ih, gain_ih, eps, shift, scaled), None, bias_hn
    if joint:
        return _projection(x, weight_ih, None, norm).unflatten(-1, (3, -1)), shift, bias_hn
    return _projection(x, weight_ih, shift, norm).unflatten(-1, (3, -1)), None, bias_hn


def lstm_layer_norm_step(
    x_gates: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    gain: Tensor | None,
    joint_shift: Tensor | None,
    cell_weight: Tensor | None,
    cell_bias: Tensor | None,
    weight_hr: Tensor | None,
    eps: float,
    joint: bool,
    h_rec: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of the layer-normalised LSTM (after Ba, Kiros & Hinton 2016, "Layer Normalization").

    `x_gates` comes from `lstm_input_gates`, shape `(B, 4, H)`. The gates are
    `(i, f, g, o) = x_gates + gain * LN(W_hh h)`, or `gain * LN(x_gates + W_hh h) + joint_shift` when `joint`;
    then `c' = σ(f) c + σ(i) tanh(g)`, `h' = σ(o) tanh(LN_c(c'))` (`h' = W_hr h'` with a projection).
    With `gain=None` nothing is normalised (torch's LSTM step). `h_rec`, when given, replaces `h` in
    `W_hh h` (`h` with recurrent dropout). Returns `(h', c')`.
    """
    hidden_size = c.size(1)
    hh = torch.mm(h if h_rec is None else h_rec, weight_hh.t()).view(h.size(0), 4, hidden_size)
    if gain is None:
        gates = x_gates + hh
    elif joint:
        normed = F.layer_norm(hh + x_gates, [hidden_size], None, None, eps)
        gates = normed * gain if joint_shift is None else torch.addcmul(joint_shift, normed, gain)
    else:
        gates = torch.addcmul(x_gates, F.layer_norm(hh, [hidden_size], None, None, eps), gain)
    i, f, g, o = gates.unbind(1)
    c_new = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
    read = c_new if gain is None else F.layer_norm(c_new, [hidden_size], cell_weight, cell_bias, eps)
    h_new = torch.sigmoid(o) * torch.tanh(read)
    if weight_hr is not None:
        h_new = torch.mm(h_new, weight_hr.t())
    return h_new, c_new


def gru_layer_norm_step(
    x_gates: Tensor,
    h: Tensor,
    weight_hh: Tensor,
    gain: Tensor | None,
    joint_shift: Tensor | None,
    bias_hn: Tensor | None,
    eps: float,
    joint: bool,
    h_rec: Tensor | None = None,
) -> Tensor:
    """One step of the layer-normalised GRU.

    `x_gates` comes from `gru_input_gates`, shape `(B, 3, H)`; `u = W_hh h` (gate blocks `u_r, u_z, u_n`).
    Not `joint`: with `a = gain * LN(u)`, `r = σ(x_r + a_r)`, `z = σ(x_z + a_z)`,
    `n = tanh(x_n + r (a_n + b_hn))`. `joint`: `r = σ(gain_r LN(x_r + u_r) + s_r)`, likewise `z`, and
    `n = tanh(gain_n LN(x_n + r u_n) + s_n + r b_hn)` with `s = joint_shift`. Then `h' = (1 - z) n + z h`.
    With `gain=None` nothing is normalised (torch's GRU step, `a = u`). `h_rec`, when given, replaces `h`
    in `u = W_hh h` only (`h` with recurrent dropout; the update `z h` keeps `h`, as in Keras). Returns `h'`.
    """
    hidden_size = h.size(1)
    hh = torch.mm(h if h_rec is None else h_rec, weight_hh.t()).view(h.size(0), 3, hidden_size)
    if joint and gain is not None:
        a_rz = F.layer_norm(x_gates[:, :2] + hh[:, :2], [hidden_size], None, None, eps) * gain[:2]
        if joint_shift is not None:
            a_rz = a_rz + joint_shift[:2]
        r, z = torch.sigmoid(a_rz).unbind(1)
        u_n = torch.addcmul(x_gates[:, 2], r, hh[:, 2])
        n_pre = F.layer_norm(u_n, [hidden_size], None, None, eps) * gain[2]
        if joint_shift is not None:
            n_pre = n_pre + joint_shift[2]
        if bias_hn is not None:
            n_pre = torch.addcmul(n_pre, r, bias_hn)
        n = torch.tanh(n_pre)
    else:
        if gain is not None:
            hh = F.layer_norm(hh, [hidden_size], None, None, eps) * gain
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
    recurrent: Tensor | None = None,
    zoneout: tuple[list[Tensor] | float | None, ...] = (),
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run `step(x, *state, *params)` over `xs` (oldest first); returns `(outputs, final state)`.

    `step` returns the new state, or the new hidden state alone when `state0` has one tensor. Rows leave
    the state when the batch shrinks and are put back at the end. `outputs` is the concatenation of the
    per-step hidden states in time order (packed layout). `recurrent`: a per-sequence `(B, width)` mask on
    the `h` entering `W_hh` (passed to `step` as `h_rec`); `zoneout`: per state, the per-step 0/1 masks
    (time order) or the probability (its expectation, in eval) of keeping the previous value, or `None`.
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
        if recurrent is None:
            new = step(x, *state, *params)
        else:
            new = step(x, *state, *params, h_rec=state[0] * recurrent[:batch])
        new = (new,) if single else new
        if zoneout:
            new = tuple(
                s_new
                if keep is None
                else zoneout_blend(s_new, s, keep if isinstance(keep, float) else keep[t])
                for s_new, s, keep in zip(new, state, zoneout, strict=True)
            )
        state = new
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
    xs: list[Tensor],
    h0: Tensor,
    c0: Tensor,
    params: LSTMStepParams,
    reverse: bool,
    recurrent: Tensor | None = None,
    zoneout: tuple[list[Tensor] | float | None, ...] = (),
) -> tuple[Tensor, Tensor, Tensor]:
    """Run `lstm_layer_norm_step` over `xs` (oldest first); returns `(outputs, h_n, c_n)`.

    `params` are the step's arguments after `(x_gates, h, c)`. `outputs` is the concatenation of the
    per-step hidden states in time order (packed layout). `recurrent` and `zoneout` (`(hidden, cell)`): the
    masks of `_layer_norm_loop`.
    """
    out, (h, c) = _layer_norm_loop(lstm_layer_norm_step, xs, (h0, c0), params, reverse, recurrent, zoneout)
    return out, h, c


def gru_layer_norm_sequence(
    xs: list[Tensor],
    h0: Tensor,
    params: GRUStepParams,
    reverse: bool,
    recurrent: Tensor | None = None,
    zoneout: tuple[list[Tensor] | float | None, ...] = (),
) -> tuple[Tensor, Tensor]:
    """Run `gru_layer_norm_step` over `xs` (oldest first); returns `(outputs, h_n)`.

    `params` are the step's arguments after `(x_gates, h)`; `recurrent` and `zoneout` (`(hidden,)`): the
    masks of `_layer_norm_loop`.
    """
    out, (h,) = _layer_norm_loop(gru_layer_norm_step, xs, (h0,), params, reverse, recurrent, zoneout)
    return out, h
