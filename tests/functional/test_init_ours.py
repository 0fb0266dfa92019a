"""The init functions on rnn_stability.nn modules: standard parameters initialised, layer-norm parameters untouched."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from rnn_stability.functional import chrono_, init_rnn_
from rnn_stability.functional.init import (
    GATE_NAMES,
    gate_block,
    layer_weights,
    recurrent_kind,
    recurrent_modules,
)

ours = pytest.importorskip("rnn_stability.nn")

IN, H = 4, 5
MODULES: list[tuple[str, Callable[[], nn.Module]]] = [
    ("LSTM", lambda: ours.LSTM(IN, H, num_layers=2, bidirectional=True, layer_norm=True)),
    ("LSTM", lambda: ours.LSTM(IN, H, num_layers=2, proj_size=3)),
    ("LSTM", lambda: ours.LSTM(IN, H, num_layers=2, residual=True, layer_norm=True)),
    ("GRU", lambda: ours.GRU(IN, H, num_layers=2, bidirectional=True, layer_norm=True)),
    ("LSTM", lambda: ours.LSTMCell(IN, H, layer_norm=True)),
    ("GRU", lambda: ours.GRUCell(IN, H, layer_norm=True)),
]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(("kind", "make"), MODULES)
@pytest.mark.parametrize("scheme", ["orthogonal", "chrono"])
def test_schemes_on_our_modules(kind: str, make: Callable[[], nn.Module], scheme: str) -> None:
    module = make()
    assert recurrent_kind(module) == kind
    assert [name for name, _ in recurrent_modules(nn.Sequential(module))] == ["0"]
    standard = {
        id(t) for w in layer_weights(module) for t in (w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh)
    }
    standard |= {id(w.weight_hr) for w in layer_weights(module)}
    others = {n: p.detach().clone() for n, p in module.named_parameters() if id(p) not in standard}
    if getattr(module, "layer_norm", False):
        assert others, "layer-norm parameters expected"
    init_rnn_(module, scheme, max_timescale=20, generator=torch.Generator().manual_seed(0))
    for weights in layer_weights(module):
        for gate in GATE_NAMES[kind]:
            sv = torch.linalg.svdvals(gate_block(weights.weight_hh, kind, gate).detach().double())
            torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-5)
        assert weights.bias_ih is not None and weights.bias_hh is not None
        keep = gate_block(weights.bias_ih + weights.bias_hh, kind, "forget" if kind == "LSTM" else "update")
        if scheme == "orthogonal" and kind == "LSTM":
            assert torch.equal(keep, torch.ones(H))
        if scheme == "chrono":
            assert keep.min() >= 0 and keep.max() <= math.log(19) + 1e-6
            if kind == "LSTM":
                assert torch.equal(gate_block(weights.bias_ih, kind, "input"), -keep)
    for name, value in module.named_parameters():
        if name in others:
            assert torch.equal(value, others[name]), name
    x = torch.randn(3, 2, IN) if not isinstance(module, nn.RNNCellBase) else torch.randn(2, IN)
    module(x)  # still runs after in-place initialisation


def test_chrono_rejects_our_modules_only_by_kind() -> None:
    with pytest.raises(TypeError, match="chrono_"):
        chrono_(nn.RNN(IN, H), 10)
    chrono_(ours.GRU(IN, H), 10)
