"""Glorot (Xavier) initialisation of every input-to-hidden gate block."""

from __future__ import annotations

import torch
from torch import nn

from rnn_stability.functional.init.gates import sample_gate_blocks_

__all__ = ["xavier_normal_", "xavier_uniform_"]


def xavier_uniform_(
    module: nn.Module,
    gain: float = 1.0,
    *,
    recurrent_weights: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Glorot-uniform initialisation of each gate block of the input weights `weight_ih`, in place.

    Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward neural networks":
    `U[-a, a]` with `a = gain * sqrt(6 / (fan_in + fan_out))`. Each gate is its own `H × in` map, so the
    fan-out is `H`, not the `num_gates * H` rows of the fused matrix that `torch.nn.init` would use.

    Args:
        module: a `torch.nn` or `rnn_stability.nn` LSTM, GRU, RNN or cell.
        gain: scaling factor of the bound.
        recurrent_weights: also initialise the gate blocks of `weight_hh` and the LSTM projection `weight_hr`
            (by default they are left alone, for `orthogonal_` or `identity_`).
        generator: optional CPU generator.

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if `module` is not a recurrent module or `generator` is not a CPU generator.
        ValueError: if `gain` is not a finite positive number.

    Examples:
        >>> gru = xavier_uniform_(torch.nn.GRU(10, 20), generator=torch.Generator().manual_seed(0))
        >>> bool(gru.weight_ih_l0.abs().max() <= (6 / (10 + 20)) ** 0.5)
        True
    """
    parts = ("weight_ih", "weight_hh") if recurrent_weights else ("weight_ih",)
    return sample_gate_blocks_(module, torch.nn.init.xavier_uniform_, gain, generator, parts=parts)


def xavier_normal_(
    module: nn.Module,
    gain: float = 1.0,
    *,
    recurrent_weights: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Glorot-normal initialisation of each gate block of the input weights `weight_ih`, in place.

    Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward neural networks":
    `N(0, std²)` with `std = gain * sqrt(2 / (fan_in + fan_out))`, fans taken per gate block.

    Args:
        module: a `torch.nn` or `rnn_stability.nn` LSTM, GRU, RNN or cell.
        gain: scaling factor of the standard deviation.
        recurrent_weights: also initialise the gate blocks of `weight_hh` and the projection `weight_hr`.
        generator: optional CPU generator.

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if `module` is not a recurrent module or `generator` is not a CPU generator.
        ValueError: if `gain` is not a finite positive number.

    Examples:
        >>> cell = xavier_normal_(torch.nn.LSTMCell(64, 64), generator=torch.Generator().manual_seed(0))
        >>> round(cell.weight_ih[:64].std().item() / (2 / 128) ** 0.5, 1)
        1.0
    """
    parts = ("weight_ih", "weight_hh") if recurrent_weights else ("weight_ih",)
    return sample_gate_blocks_(module, torch.nn.init.xavier_normal_, gain, generator, parts=parts)
