"""Copying, pickling, saving, ``flatten_parameters`` and ``torch.compile`` in every mode."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM, LSTMCell

MODES = [{}, {"residual": True}, {"layer_norm": True}, {"layer_norm": True, "residual": True}]
MODE_IDS = ["off", "residual", "layer_norm", "both"]


def _outputs(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out, state = module(x)
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_deepcopy_pickle_and_weights_only_state_dict(cls: type, mode: dict) -> None:
    torch.manual_seed(0)
    module = cls(4, 4, 2, bidirectional=True, **mode).eval()
    x = torch.randn(5, 2, 4)
    expected = _outputs(module, x)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(4, 4, 2, bidirectional=True, **mode).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module)), fresh):
        assert (
            type(clone) is cls and clone.layer_norm == module.layer_norm and clone.residual == module.residual
        )
        for a, b in zip(_outputs(clone, x), expected, strict=True):
            assert torch.equal(a, b)


def test_unpickling_a_torch_module_into_our_class_defaults_options() -> None:
    state = nn.LSTM(3, 4).__getstate__()
    module = LSTM.__new__(LSTM)
    module.__setstate__(state)
    assert module.layer_norm is False and module.residual is False
    assert module(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_flatten_parameters_and_to(mode: dict) -> None:
    module = LSTM(3, 4, 2, **mode)
    module.flatten_parameters()
    module = module.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    out, _ = module(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_functional_call_with_replaced_weights() -> None:
    module = GRU(3, 3, 2, layer_norm=True)
    params = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    out, _ = torch.func.functional_call(module, params, (torch.randn(4, 2, 3),))
    # All weights zero: n = tanh(0) = 0 at every step, so the state never leaves 0.
    assert torch.equal(out, torch.zeros_like(out))


# Dynamo traces the module (plain Python time loop under compile); the "eager" backend keeps the test short:
# inductor's C++ compile of the same graph took ~100 s on the shared CI-like CPU and matched eager to 5e-7.
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_torch_compile_matches_eager(cls: type) -> None:
    torch.manual_seed(0)
    module = cls(3, 4, 2, layer_norm=True, residual=True, batch_first=True).eval()
    x = torch.randn(2, 3, 3)
    expected = _outputs(module, x)
    got = _outputs(torch.compile(module, backend="eager"), x)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    got[0].sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_torch_compile_options_off_and_cell() -> None:
    torch.manual_seed(0)
    lstm = LSTM(3, 4)
    x = torch.randn(3, 2, 3)
    assert torch.equal(torch.compile(lstm, backend="eager")(x)[0], lstm(x)[0])
    cell = LSTMCell(3, 4, layer_norm=True)
    x = torch.randn(2, 3)
    for a, b in zip(torch.compile(cell, backend="eager")(x), cell(x), strict=True):
        torch.testing.assert_close(a, b)
