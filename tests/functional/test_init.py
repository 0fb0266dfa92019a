"""Gate-aware init functions on every recurrent module type, layer count, direction and projection."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnn_stability.functional import (
    chrono_,
    forget_gate_bias_,
    identity_,
    init_rnn_,
    orthogonal_,
    xavier_normal_,
    xavier_uniform_,
)
from rnn_stability.functional.init import GATE_NAMES, gate_block, gate_blocks, layer_weights, recurrent_kind

IN, H = 5, 6


def _layers(cls: type[nn.RNNBase], **kw: object) -> list[Callable[[], nn.Module]]:
    return [
        lambda layers=layers, bi=bi: cls(IN, H, num_layers=layers, bidirectional=bi, **kw)  # type: ignore[misc]
        for layers in (1, 2)
        for bi in (False, True)
    ]


LSTMS = _layers(nn.LSTM) + _layers(nn.LSTM, proj_size=3) + [lambda: nn.LSTMCell(IN, H)]
GRUS = _layers(nn.GRU) + [lambda: nn.GRUCell(IN, H)]
RELU_RNNS = _layers(nn.RNN, nonlinearity="relu") + [lambda: nn.RNNCell(IN, H, nonlinearity="relu")]
TANH_RNNS = _layers(nn.RNN) + [lambda: nn.RNNCell(IN, H)]
ALL = LSTMS + GRUS + RELU_RNNS + TANH_RNNS


def _singular_values(block: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(block.detach().double())


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_gate_blocks(make: Callable[[], nn.Module], gain: float) -> None:
    module = make()
    kind = recurrent_kind(module)
    before = _snapshot(module)
    assert orthogonal_(module, gain, generator=torch.Generator().manual_seed(0)) is module
    for weights in layer_weights(module):
        for gate in GATE_NAMES[kind]:
            sv = _singular_values(gate_block(weights.weight_hh, kind, gate))
            torch.testing.assert_close(sv, torch.full_like(sv, gain), rtol=0, atol=1e-5 * gain)
        if weights.weight_hr is not None:
            sv = _singular_values(weights.weight_hr)
            torch.testing.assert_close(sv, torch.full_like(sv, gain), rtol=0, atol=1e-5 * gain)
    for name, value in _snapshot(module).items():  # input weights and biases are left alone
        if not name.startswith(("weight_hh", "weight_hr")):
            assert torch.equal(value, before[name]), name


def test_fused_orthogonal_is_not_blockwise_orthogonal() -> None:
    """The failure mode the module fixes: torch's orthogonal_ on the fused matrix."""
    lstm = nn.LSTM(IN, 32)
    nn.init.orthogonal_(lstm.weight_hh_l0)
    assert _singular_values(gate_block(lstm.weight_hh_l0, "LSTM", "forget")).median() < 0.8
    orthogonal_(lstm)
    assert _singular_values(gate_block(lstm.weight_hh_l0, "LSTM", "forget")).min() > 1 - 1e-5


def test_orthogonal_input_weights() -> None:
    lstm = orthogonal_(nn.LSTM(IN, H, num_layers=2, bidirectional=True), input_weights=True)
    for weights in layer_weights(lstm):
        for block in weights.weight_ih.chunk(4):
            sv = _singular_values(block)
            torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", ALL)
def test_xavier_uniform_uses_per_gate_fans(make: Callable[[], nn.Module]) -> None:
    module = make()
    kind = recurrent_kind(module)
    before = _snapshot(module)
    xavier_uniform_(module, gain=2.0, generator=torch.Generator().manual_seed(0))
    for weights in layer_weights(module):
        for block in weights.weight_ih.chunk(len(GATE_NAMES[kind])):
            bound = 2.0 * math.sqrt(6 / (block.shape[0] + block.shape[1]))
            assert block.abs().max() <= bound
    assert all(
        torch.equal(v, before[n]) for n, v in _snapshot(module).items() if not n.startswith("weight_ih")
    )


def test_xavier_bounds_are_reached_and_recurrent_option() -> None:
    lstm = xavier_uniform_(nn.LSTM(64, 64, proj_size=32), recurrent_weights=True)
    bound = math.sqrt(6 / 128)  # per gate block; the fused bound would be sqrt(6 / 320)
    assert 0.95 * bound < lstm.weight_ih_l0.abs().max() <= bound
    assert 0.95 * math.sqrt(6 / 96) < lstm.weight_hh_l0.abs().max() <= math.sqrt(6 / 96)
    assert lstm.weight_hr_l0.abs().max() <= math.sqrt(6 / 96)
    cell = xavier_normal_(nn.GRUCell(200, 200), generator=torch.Generator().manual_seed(0))
    assert abs(cell.weight_ih.std().item() / math.sqrt(2 / 400) - 1) < 0.05


@pytest.mark.parametrize("make", LSTMS)
@pytest.mark.parametrize("value", [1.0, -0.5, 3])
def test_forget_gate_bias_is_effective_once(make: Callable[[], nn.Module], value: float) -> None:
    module = make()
    before = _snapshot(module)
    assert forget_gate_bias_(module, value) is module
    for weights in layer_weights(module):
        assert weights.bias_ih is not None and weights.bias_hh is not None
        effective = gate_block(weights.bias_ih, "LSTM", "forget") + gate_block(
            weights.bias_hh, "LSTM", "forget"
        )
        assert torch.equal(effective, torch.full((H,), float(value)))
        assert torch.equal(gate_block(weights.bias_hh, "LSTM", "forget"), torch.zeros(H))
        for gate in ("input", "cell", "output"):
            name = f"bias_ih{weights.suffix}"
            assert torch.equal(
                gate_block(weights.bias_ih, "LSTM", gate), gate_block(before[name], "LSTM", gate)
            )


def test_gate_blocks_match_torch_computation() -> None:
    """The block called "forget" (LSTM) / "update" (GRU) really gates the carried state in torch's kernels."""
    x = torch.randn(7, 1, IN)
    lstm = nn.LSTM(IN, H)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
    c0 = torch.ones(1, 1, H)
    for value, expected in ((30.0, 1.0), (-30.0, 0.0)):
        forget_gate_bias_(lstm, value)
        _, (_, c_n) = lstm(x, (torch.zeros(1, 1, H), c0))
        torch.testing.assert_close(c_n, torch.full_like(c_n, expected))
    gru = nn.GRU(IN, H)
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gate_block(gru.bias_ih_l0, "GRU", "update").fill_(30.0)  # z = 1 keeps h: h' = (1 - z) n + z h
    h0 = torch.randn(1, 1, H)
    torch.testing.assert_close(gru(x, h0)[1], h0)


@pytest.mark.parametrize("make", LSTMS + GRUS)
@pytest.mark.parametrize("max_timescale", [2, 100, 1e4])
def test_chrono_bias_range_and_signs(make: Callable[[], nn.Module], max_timescale: float) -> None:
    module = make()
    kind = recurrent_kind(module)
    before = _snapshot(module)
    assert chrono_(module, max_timescale, generator=torch.Generator().manual_seed(0)) is module
    keep_gate = "forget" if kind == "LSTM" else "update"
    high = math.log(max_timescale - 1)
    drawn = []
    for weights in layer_weights(module):
        assert weights.bias_ih is not None and weights.bias_hh is not None
        keep = gate_block(weights.bias_ih, kind, keep_gate)
        assert keep.min() >= 0 and keep.max() <= high + 1e-6
        assert torch.equal(gate_block(weights.bias_hh, kind, keep_gate), torch.zeros(H))
        drawn.append(keep)
        if kind == "LSTM":
            assert torch.equal(gate_block(weights.bias_ih, kind, "input"), -keep)
            assert torch.equal(gate_block(weights.bias_hh, kind, "input"), torch.zeros(H))
        untouched = ("cell", "output") if kind == "LSTM" else ("reset", "new")
        for gate in untouched:
            name = f"bias_ih{weights.suffix}"
            assert torch.equal(gate_block(weights.bias_ih, kind, gate), gate_block(before[name], kind, gate))
    if max_timescale > 2:  # really random, and each layer/direction draws its own
        values = torch.cat(drawn)
        assert values.unique().numel() == values.numel()
        assert len(drawn) == 1 or not torch.equal(drawn[0], drawn[1])
    assert all(torch.equal(v, before[n]) for n, v in _snapshot(module).items() if n.startswith("weight"))


@pytest.mark.parametrize("make", RELU_RNNS)
def test_identity_recurrent_weights(make: Callable[[], nn.Module]) -> None:
    module = make()
    w_ih = [w.weight_ih.detach().clone() for w in layer_weights(module)]
    assert identity_(module) is module
    for weights, before in zip(layer_weights(module), w_ih, strict=True):
        assert torch.equal(weights.weight_hh, torch.eye(H))
        assert weights.bias_ih is not None and weights.bias_hh is not None
        assert not weights.bias_ih.any() and not weights.bias_hh.any()
        assert torch.equal(weights.weight_ih, before)
    identity_(module, gain=0.5)
    assert torch.equal(layer_weights(module)[-1].weight_hh, 0.5 * torch.eye(H))


@pytest.mark.parametrize(
    ("function", "make", "match"),
    [
        (identity_, lambda: nn.LSTM(IN, H), "identity_.*RNN \\(relu\\).*LSTM"),
        (identity_, lambda: nn.RNN(IN, H), "identity_.*RNN \\(tanh\\)"),
        (identity_, lambda: nn.GRUCell(IN, H), "identity_"),
        (lambda m: chrono_(m, 10), lambda: nn.RNN(IN, H), "chrono_ supports LSTM, GRU"),
        (lambda m: chrono_(m, 10), lambda: nn.RNNCell(IN, H, nonlinearity="relu"), "chrono_"),
        (forget_gate_bias_, lambda: nn.GRU(IN, H), "forget_gate_bias_ supports LSTM"),
        (orthogonal_, lambda: nn.Linear(IN, H), "must be a recurrent module"),
        (xavier_uniform_, lambda: nn.Sequential(nn.LSTM(IN, H)), "must be a recurrent module"),
        (lambda m: orthogonal_(m, generator=0), lambda: nn.LSTM(IN, H), "generator"),  # type: ignore[arg-type]
    ],
)
def test_unsupported_modules_raise_type_error(
    function: Callable[[nn.Module], nn.Module], make: Callable[[], nn.Module], match: str
) -> None:
    module = make()
    before = _snapshot(module)
    with pytest.raises(TypeError, match=match.replace("_ supports", "_` supports")):
        function(module)
    assert all(torch.equal(v, before[n]) for n, v in _snapshot(module).items())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: chrono_(nn.LSTM(IN, H), 1.5), "max_timescale"),
        (lambda: chrono_(nn.GRU(IN, H), float("inf")), "max_timescale"),
        (lambda: chrono_(nn.GRU(IN, H), True), "max_timescale"),  # type: ignore[arg-type]
        (lambda: chrono_(nn.LSTM(IN, H, bias=False), 10), "bias=True"),
        (lambda: forget_gate_bias_(nn.LSTMCell(IN, H, bias=False)), "bias=True"),
        (lambda: forget_gate_bias_(nn.LSTM(IN, H), float("nan")), "value"),
        (lambda: orthogonal_(nn.GRU(IN, H), 0.0), "gain"),
        (lambda: xavier_normal_(nn.GRU(IN, H), -1.0), "gain"),
        (lambda: identity_(nn.RNN(IN, H, nonlinearity="relu"), float("nan")), "gain"),
    ],
)
def test_bad_values_raise_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_seeded_generator_is_independent_of_global_rng_and_device_dtype() -> None:
    def init(dtype: torch.dtype) -> nn.Module:
        module = nn.LSTM(IN, H, num_layers=2, proj_size=2, dtype=dtype)
        with torch.no_grad():  # cell and output biases keep torch's (global-RNG) default otherwise
            for name, p in module.named_parameters():
                if name.startswith("bias"):
                    p.zero_()
        gen = torch.Generator().manual_seed(7)
        orthogonal_(module, generator=gen)
        xavier_uniform_(module, generator=gen)
        return chrono_(module, 50, generator=gen)

    torch.manual_seed(1)
    first = init(torch.float32)
    torch.manual_seed(2)
    torch.rand(10)
    second = init(torch.float32)
    for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b), name
    as_double = init(torch.float64)
    for a, b in zip(first.parameters(), as_double.parameters(), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-6)
    first(torch.randn(3, 2, IN))  # the module still runs on the modified flat weights


@settings(max_examples=15, deadline=None)
@given(
    cls=st.sampled_from([nn.LSTM, nn.GRU]),
    input_size=st.integers(1, 7),
    hidden=st.integers(1, 9),
    layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    proj=st.integers(0, 8),
    max_timescale=st.floats(2.0, 1e5),
    seed=st.integers(0, 2**31),
)
def test_chrono_scheme_property(
    cls: type[nn.RNNBase],
    input_size: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    proj: int,
    max_timescale: float,
    seed: int,
) -> None:
    kwargs = {"proj_size": proj} if cls is nn.LSTM and proj < hidden else {}
    module = cls(input_size, hidden, num_layers=layers, bidirectional=bidirectional, **kwargs)
    init_rnn_(module, "chrono", max_timescale=max_timescale, generator=torch.Generator().manual_seed(seed))
    kind = recurrent_kind(module)
    assert len(layer_weights(module)) == layers * (2 if bidirectional else 1)
    for weights in layer_weights(module):
        for block in gate_blocks(weights.weight_hh, kind):
            sv = _singular_values(block)
            torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-5)
        assert weights.bias_ih is not None and weights.bias_hh is not None
        effective = (weights.bias_ih + weights.bias_hh).detach()
        keep = gate_block(effective, kind, "forget" if kind == "LSTM" else "update")
        assert keep.min() >= 0 and keep.max() <= math.log(max_timescale - 1) + 1e-5
        others = effective.clone()
        gate_block(others, kind, "forget" if kind == "LSTM" else "update").zero_()
        if kind == "LSTM":
            assert torch.equal(gate_block(effective, kind, "input"), -keep)
            gate_block(others, kind, "input").zero_()
        assert not others.any()  # every other gate bias is zero under the scheme
