"""One entry point that applies a named initialisation scheme to a recurrent module."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from rnn_stability.functional.init.chrono import check_max_timescale, chrono_
from rnn_stability.functional.init.forget_bias import forget_gate_bias_
from rnn_stability.functional.init.gates import (
    check_gain,
    check_generator,
    layer_weights,
    recurrent_kind,
    require_biases,
    require_kind,
)
from rnn_stability.functional.init.identity import identity_
from rnn_stability.functional.init.orthogonal import orthogonal_
from rnn_stability.functional.init.xavier import xavier_uniform_

__all__ = ["SCHEMES", "check_scheme", "check_scheme_options", "init_rnn_"]

SCHEMES: tuple[str, ...] = ("orthogonal", "chrono", "irnn", "xavier")
"""Names accepted by `init_rnn_` (and by `rnn_stability.callbacks.RNNInitializer`)."""


def check_scheme_options(
    schemes: Iterable[str], *, gain: float, forget_bias: float, max_timescale: float | None
) -> None:
    """Check the options shared by every scheme, raising `ValueError` naming the bad one.

    `max_timescale` is required when `"chrono"` is among `schemes` and checked whenever it is given.

    Examples:
        >>> check_scheme_options(["chrono"], gain=1.0, forget_bias=1.0, max_timescale=None)
        Traceback (most recent call last):
        ...
        ValueError: `max_timescale` is required by the 'chrono' scheme (a number >= 2), got None
    """
    check_gain("gain", gain)
    if (
        isinstance(forget_bias, bool)
        or not isinstance(forget_bias, (int, float))
        or not math.isfinite(forget_bias)
    ):
        raise ValueError(f"`forget_bias` must be a finite float, got {forget_bias!r}")
    if max_timescale is not None:
        check_max_timescale(max_timescale)
    elif "chrono" in schemes:
        raise ValueError("`max_timescale` is required by the 'chrono' scheme (a number >= 2), got None")


def check_scheme(
    module: nn.Module,
    scheme: str,
    *,
    gain: float = 1.0,
    forget_bias: float = 1.0,
    max_timescale: float | None = None,
) -> str:
    """Check that `init_rnn_` can apply `scheme` to `module` with these options, without touching it.

    Returns:
        the module kind (see `recurrent_kind`).

    Raises:
        TypeError: if `module` is not recurrent or `scheme` does not apply to it.
        ValueError: for an unknown `scheme` or an invalid option.

    Examples:
        >>> check_scheme(torch.nn.GRU(2, 4), "chrono", max_timescale=50)
        'GRU'
    """
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` must be one of {', '.join(map(repr, SCHEMES))}, got {scheme!r}")
    kind = recurrent_kind(module)
    check_scheme_options((scheme,), gain=gain, forget_bias=forget_bias, max_timescale=max_timescale)
    if scheme == "chrono":
        require_kind(module, "init_rnn_(scheme='chrono')", ("LSTM", "GRU"))
        require_biases(module, layer_weights(module)[0], "init_rnn_(scheme='chrono')")
    if scheme == "irnn":
        require_kind(module, "init_rnn_(scheme='irnn')", ("RNN_RELU",))
    return kind


def init_rnn_(
    module: nn.Module,
    scheme: str = "orthogonal",
    *,
    gain: float = 1.0,
    forget_bias: float = 1.0,
    max_timescale: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise every layer and direction of a recurrent module with a named scheme, in place.

    All schemes set every bias to zero first and initialise each gate block of `weight_ih` with
    `xavier_uniform_`; they differ in the recurrent weights and gate biases:

    - `"orthogonal"`: `orthogonal_` per gate block of `weight_hh` and `weight_hr` (Saxe et al.
      2014); LSTM forget bias `forget_bias` via `forget_gate_bias_` (Jozefowicz et al. 2015).
    - `"chrono"`: the same weights, gate biases from `chrono_` with `max_timescale` (Tallec & Ollivier
      2018); LSTM and GRU only.
    - `"irnn"`: `weight_hh = gain * I` via `identity_` (Le et al. 2015); ReLU RNNs only.
    - `"xavier"`: `xavier_uniform_` per gate block of `weight_hh` and `weight_hr` too; LSTM forget
      bias `forget_bias`.

    Args:
        module: a `torch.nn` or `rnn_stability.nn` LSTM, GRU, RNN or cell.
        scheme: one of `SCHEMES`.
        gain: gain of the recurrent weights (orthogonal, identity or xavier).
        forget_bias: effective LSTM forget-gate bias of the `orthogonal` and `xavier` schemes (ignored for
            GRU and RNN modules).
        max_timescale: `T_max` of the `chrono` scheme (required there, ignored otherwise).
        generator: optional CPU generator; with a seeded generator the result does not depend on the global RNG.

    Returns:
        `module`, modified in place.

    Raises:
        TypeError: if the module is not recurrent or the scheme does not apply to it (`chrono` on a vanilla
            RNN, `irnn` on anything but a ReLU RNN).
        ValueError: for an unknown `scheme`, a missing or invalid `max_timescale`, or an invalid `gain` /
            `forget_bias`.

    Examples:
        >>> gen = torch.Generator().manual_seed(0)
        >>> lstm = init_rnn_(torch.nn.LSTM(2, 8), "chrono", max_timescale=100, generator=gen)
        >>> bool(torch.equal(lstm.bias_ih_l0[:8], -lstm.bias_ih_l0[8:16]))
        True
        >>> rnn = init_rnn_(torch.nn.RNN(2, 8, nonlinearity="relu"), "irnn", generator=gen)
        >>> bool(torch.equal(rnn.weight_hh_l0, torch.eye(8)))
        True
    """
    kind = check_scheme(module, scheme, gain=gain, forget_bias=forget_bias, max_timescale=max_timescale)
    check_generator(generator)

    # Everything is validated: from here on nothing raises, so a module is never left half-initialised.
    with torch.no_grad():
        for weights in layer_weights(module):
            for bias in (weights.bias_ih, weights.bias_hh):
                if bias is not None:
                    bias.zero_()
    if scheme == "xavier":
        xavier_uniform_(module, gain, recurrent_weights=True, generator=generator)
    else:
        xavier_uniform_(module, generator=generator)
        if scheme == "irnn":
            identity_(module, gain)
        else:
            orthogonal_(module, gain, generator=generator)
    if scheme == "chrono":
        assert max_timescale is not None
        chrono_(module, max_timescale, generator=generator)
    elif kind == "LSTM":
        forget_gate_bias_(module, forget_bias)
    return module
