"""Identity recurrent weights for ReLU RNNs (IRNN)."""

from __future__ import annotations

import torch
from torch import nn

from rnn_stability.functional.init.gates import check_gain, layer_weights, require_kind

__all__ = ["identity_"]


def identity_(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """IRNN initialisation: recurrent weights `gain * I` and zero biases, in place.

    Le, Jaitly & Hinton (2015), "A Simple Way to Initialize Recurrent Networks of Rectified Linear Units": with
    `relu` units and `W_hh = I` the hidden state is copied forward unchanged when there is no input, so
    gradients neither vanish nor explode at initialisation. Input weights are not touched.

    Only ReLU RNNs are accepted: with `tanh` the identity does not give a norm-preserving map (`tanh`
    contracts every step), which is not the method of the paper — use `orthogonal_` for tanh RNNs.

    Args:
        module: `torch.nn.RNN(..., nonlinearity="relu")` or `torch.nn.RNNCell(..., nonlinearity="relu")`.
        gain: scale of the identity (Le et al. also report a scaled identity, e.g. `0.01`, for some tasks).

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if `module` is not a ReLU RNN (an LSTM, GRU or tanh RNN).
        ValueError: if `gain` is not a finite positive number.

    Examples:
        >>> rnn = identity_(torch.nn.RNN(3, 4, nonlinearity="relu"))
        >>> bool(torch.equal(rnn.weight_hh_l0, torch.eye(4))), rnn.bias_hh_l0.abs().sum().item()
        (True, 0.0)
    """
    require_kind(module, "identity_", ("RNN_RELU",))
    gain = check_gain("gain", gain)
    with torch.no_grad():
        for weights in layer_weights(module):
            weights.weight_hh.copy_(torch.eye(*weights.weight_hh.shape) * gain)
            for bias in (weights.bias_ih, weights.bias_hh):
                if bias is not None:
                    bias.zero_()
    return module
