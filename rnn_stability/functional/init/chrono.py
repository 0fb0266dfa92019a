"""Chrono initialisation of LSTM and GRU gate biases."""

from __future__ import annotations

import math

import torch
from torch import nn

from rnn_stability.functional.init.gates import (
    check_generator,
    gate_block,
    layer_weights,
    require_biases,
    require_kind,
    sample_into_,
)

__all__ = ["chrono_"]


def _log_uniform_(tensor: torch.Tensor, *, generator: torch.Generator | None, high: float) -> None:
    tensor.uniform_(1.0, high, generator=generator).log_()


def check_max_timescale(max_timescale: object) -> float:
    """Return `max_timescale` as a float if it is a finite number >= 2, else raise `ValueError`."""
    if (
        isinstance(max_timescale, bool)
        or not isinstance(max_timescale, (int, float))
        or not math.isfinite(max_timescale)
        or max_timescale < 2
    ):
        raise ValueError(
            "`max_timescale` must be a finite number >= 2 (biases are drawn from log U[1, max_timescale - 1]), "
            f"got {max_timescale!r}"
        )
    return float(max_timescale)


def chrono_(
    module: nn.Module, max_timescale: float, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Chrono initialisation of the gate biases of an LSTM or GRU, in place.

    Tallec & Ollivier (2018), "Can recurrent neural networks warp time?": a gate bias `b` gives a unit a
    characteristic memory of about `1 + exp(b)` steps, so drawing `b = log(u)`, `u ~ U[1, T_max - 1]`
    spreads the memories of the units over `[2, T_max]` steps, matched to the expected range of temporal
    dependencies. The weights are not touched.

    - LSTM: forget gate `b_f = log(U[1, T_max - 1])` and input gate `b_i = -b_f`, written into `bias_ih`
      with the `bias_hh` part of both gates set to 0 (so the effective bias is the sampled one).
    - GRU: torch computes `h' = (1 - z) * n + z * h`, so the update gate `z` keeps the old state and plays
      the role of the LSTM forget gate (and `1 - z` that of the input gate): `b_z = +log(U[1, T_max - 1])`
      in `bias_ih`, `bias_hh[z] = 0`. Reset and candidate biases are left alone.

    Each layer and direction draws its own biases, so all biases lie in `[0, log(max_timescale - 1)]`.

    Args:
        module: a `torch.nn` or `rnn_stability.nn` LSTM, GRU, LSTMCell or GRUCell with `bias=True`.
        max_timescale: `T_max`, the longest dependency (in steps) expected in the data; at least 2.
        generator: optional CPU generator.

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if `module` is not an LSTM or GRU (a vanilla RNN has no gates) or `generator` is not a
            CPU generator.
        ValueError: if `max_timescale` is not a finite number >= 2 or the module has no biases.

    Examples:
        >>> lstm = chrono_(torch.nn.LSTM(2, 8), max_timescale=100, generator=torch.Generator().manual_seed(0))
        >>> b_i, b_f = lstm.bias_ih_l0[:8], lstm.bias_ih_l0[8:16]
        >>> bool(torch.equal(b_i, -b_f)), bool(b_f.min() >= 0), bool(b_f.max() <= math.log(99))
        (True, True, True)
    """
    kind = require_kind(module, "chrono_", ("LSTM", "GRU"))
    max_timescale = check_max_timescale(max_timescale)
    check_generator(generator)
    with torch.no_grad():
        for weights in layer_weights(module):
            bias_ih, bias_hh = require_biases(module, weights, "chrono_")
            keep_gate = "forget" if kind == "LSTM" else "update"
            keep = gate_block(bias_ih, kind, keep_gate)
            sample_into_(keep, _log_uniform_, generator, high=max_timescale - 1.0)
            gate_block(bias_hh, kind, keep_gate).zero_()
            if kind == "LSTM":
                torch.neg(keep, out=gate_block(bias_ih, kind, "input"))
                gate_block(bias_hh, kind, "input").zero_()
    return module
