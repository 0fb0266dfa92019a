"""LSTM forget-gate bias, written once into the effective bias."""

from __future__ import annotations

import math

import torch
from torch import nn

from rnn_stability.functional.init.gates import gate_block, layer_weights, require_biases, require_kind

__all__ = ["forget_gate_bias_"]


def forget_gate_bias_(module: nn.Module, value: float = 1.0) -> nn.Module:
    """Set the effective forget-gate bias of every layer and direction of an LSTM to `value`, in place.

    Jozefowicz, Zaremba & Sutskever (2015), "An Empirical Exploration of Recurrent Network Architectures": a
    forget-gate bias of 1 lets gradients flow through the cell state from the start and is a robust default.

    torch adds two biases, so the effective forget bias is `bias_ih[f] + bias_hh[f]`; setting `value` in
    both would double it. This function writes `bias_ih[f] = value` and `bias_hh[f] = 0` and leaves the
    other gates alone.

    Args:
        module: a `torch.nn` or `rnn_stability.nn` LSTM or LSTMCell with `bias=True`.
        value: the effective forget-gate bias.

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if `module` is not an LSTM (a GRU has no forget gate: see `chrono_`).
        ValueError: if `value` is not a finite number or the module has no biases.

    Examples:
        >>> lstm = forget_gate_bias_(torch.nn.LSTM(3, 4), value=1.0)
        >>> (lstm.bias_ih_l0[4:8] + lstm.bias_hh_l0[4:8]).tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    kind = require_kind(module, "forget_gate_bias_", ("LSTM",))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`value` must be a finite float, got {value!r}")
    with torch.no_grad():
        for weights in layer_weights(module):
            bias_ih, bias_hh = require_biases(module, weights, "forget_gate_bias_")
            gate_block(bias_ih, kind, "forget").fill_(float(value))
            gate_block(bias_hh, kind, "forget").zero_()
    return module
