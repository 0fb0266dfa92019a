"""Orthogonal initialisation of every recurrent gate block."""

from __future__ import annotations

import torch
from torch import nn

from rnn_stability.functional.init.gates import sample_gate_blocks_

__all__ = ["orthogonal_"]


def orthogonal_(
    module: nn.Module,
    gain: float = 1.0,
    *,
    input_weights: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise each gate block of the recurrent weights of `module` to a (semi-)orthogonal matrix, in place.

    Saxe, McClelland & Ganguli (2014), "Exact solutions to the nonlinear dynamics of learning in deep linear
    neural networks": an orthogonal recurrent matrix preserves the norm of the hidden state and of the
    back-propagated gradient, so signals neither vanish nor explode at initialisation.

    `torch.nn.init.orthogonal_` applied to the fused `(4H, H)` matrix of an LSTM makes the *columns* of
    the fused matrix orthonormal, which leaves each `H × H` gate block with singular values far below 1. Here
    every gate block of `weight_hh` (`H × H`, or `H × proj_size` for a projected LSTM) gets its own
    orthogonal matrix times `gain`, as does the LSTM projection `weight_hr`. Every layer and direction is
    handled; biases are not touched.

    Args:
        module: a `torch.nn` or `rnn_stability.nn` LSTM, GRU, RNN or cell.
        gain: scale of the orthogonal matrices (all singular values equal `gain`).
        input_weights: also make each gate block of `weight_ih` (semi-)orthogonal.
        generator: optional CPU generator, for initialisation that is identical across processes.

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if `module` is not a recurrent module or `generator` is not a CPU generator.
        ValueError: if `gain` is not a finite positive number.

    Examples:
        >>> lstm = orthogonal_(torch.nn.LSTM(8, 16), generator=torch.Generator().manual_seed(0))
        >>> block = lstm.weight_hh_l0[16:32]  # the forget-gate block
        >>> torch.allclose(block @ block.T, torch.eye(16), atol=1e-5)
        True
    """
    parts = ("weight_hh", "weight_ih") if input_weights else ("weight_hh",)
    return sample_gate_blocks_(module, torch.nn.init.orthogonal_, gain, generator, parts=parts)
