"""The C++ LSTM loop with the input projection inside (`LSTMLayerNormLayerNative`): the backward's chunks of
steps, `xp` recomputed for narrow inputs, and the oneDNN matrix products of float32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from rnn_stability.nn import GRU, LSTM
from rnn_stability.nn.fused import LSTMLayerNormFunction
from rnn_stability.nn.layer_norm import gate_layer_norm
from rnn_stability.nn.native import LSTMLayerNormLayerNative
from rnn_stability.nn.native_gru import GRULayerNormLayerNative
from tests.nn.native_cases import (
    ATOL_LOOPS,
    EPS,
    RTOL_LOOPS,
    _native_allowed,  # noqa: F401  (fixture, used by name)
    assert_all_close,
    build,
    kernel,  # noqa: F401  (fixture, used by name)
    native_switch,
    randn,
    spy_paths,
    weighted_loss,
)

# The variants the module runs in C++ ("scaled" is tested on the op itself below).
MODULE_VARIANTS = ("recurrent", "joint", "separate")

pytestmark = [
    pytest.mark.usefixtures("kernel"),
    pytest.mark.filterwarnings("ignore:TF32 acceleration"),  # toggling oneDNN mentions Intel GPUs
]


def _run(module: LSTM, x: Tensor, enabled: bool) -> tuple[list[Tensor], list[Tensor]]:
    x = x.detach().requires_grad_()
    with native_switch(enabled), spy_paths() as spy:
        out, (h, c) = module(x)
        values = [out, h, c]
        grads = torch.autograd.grad(weighted_loss(values), [x, *module.parameters()])
    directions = module.num_layers * (2 if module.bidirectional else 1)
    assert spy.calls["native" if enabled else "fused"] == directions
    return values, list(grads)


@pytest.mark.parametrize("variant", MODULE_VARIANTS)
@pytest.mark.parametrize("input_size", [2, 9], ids=["xp-recomputed", "xp-kept"])
def test_several_backward_chunks_match_pytorch_loop(variant: str, input_size: int) -> None:
    """300 rows make the backward take 4 steps a chunk: 9 steps are 3 chunks, the last one partial; an input of
    2 features (at most half the hidden size) has the backward recompute xp, one of 9 keeps it."""
    module = build(input_size=input_size, hidden_size=4, num_layers=2, bidirectional=True, layer_norm=variant)
    x = randn(9, 300, input_size, seed=4)
    values, grads = _run(module, x, True)
    expected_values, expected_grads = _run(module, x, False)
    assert_all_close(values, expected_values, ATOL_LOOPS, RTOL_LOOPS)
    # Weight gradients sum 2700 rows, in chunks here and in one product there: float64 rounding of their scale.
    for got, want in zip(grads, expected_grads, strict=True):
        assert_all_close([got], [want], 1e-12 * max(1.0, want.abs().max().item()), 1e-9)


@pytest.mark.parametrize("variant", MODULE_VARIANTS)
def test_float32_onednn_products_close_to_float64(variant: str) -> None:
    """H = 128 and 8 rows take oneDNN's products in float32 (float64 keeps ATen's): values and gradients stay
    within float32 rounding of float64, with oneDNN on and off."""
    sizes = dict(input_size=64, hidden_size=128, num_layers=2, layer_norm=variant, seed=2)
    module = build(**sizes)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.mul_(0.1)  # weights of the usual scale 1 / sqrt(H): products of moderate size
    x = randn(6, 8, 64, seed=5)
    expected_values, expected_grads = _run(module, x, True)
    low = build(**sizes).float()  # type: ignore[arg-type]
    low.load_state_dict(module.state_dict())
    for onednn in (True, False):
        with torch.backends.mkldnn.flags(enabled=onednn):
            values, grads = _run(low, x.float(), True)
        assert_all_close([v.double() for v in values], [v.detach() for v in expected_values], 1e-4, 1e-4)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got.double(), want, atol=5e-4 * want.abs().max().item(), rtol=0)


def test_inference_keeps_no_per_step_buffers() -> None:
    """Under no_grad the loop allocates one step's buffers, not T steps' (the pool grows by a few kB only)."""
    from rnn_stability.nn import native

    module = build(input_size=3, hidden_size=16, num_layers=2, dtype=torch.float32, layer_norm="separate")
    x = randn(200, 4, 3, dtype=torch.float32)
    native.empty_cache()
    before = native.workspace_bytes()  # blocks that other live tensors still use
    with torch.no_grad():
        module(x)
    per_step = 4 * 16 * 4 * 4  # one step's gate buffer of one layer, in bytes
    assert native.workspace_bytes() - before < 20 * per_step
    x.requires_grad_()
    module(x)[0].sum().backward()
    assert native.workspace_bytes() - before > 200 * per_step  # training keeps every step's


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, "recurrent", "joint"])
def test_batch_norm_runs_the_cpp_loop(cls: type, layer_norm: bool | str) -> None:
    """`batch_norm`: the C++ op takes the batch-normalised `W_ih x` (its product through the kernel's, the
    batch norm by autograd) and matches the PyTorch loops in float64: outputs, every gradient, the running
    statistics, and in eval (running statistics) too."""
    function = LSTMLayerNormLayerNative if cls is LSTM else GRULayerNormLayerNative
    modules = [cls(3, 8, 2, layer_norm=layer_norm, batch_norm=True, bidirectional=True, dtype=torch.float64)]
    modules.append(copy.deepcopy(modules[0]))
    x = (randn(5, 4, 3, seed=6) * 3 + 2).requires_grad_()
    results = []
    for module, enabled in zip(modules, (True, False), strict=True):
        calls: list[int] = []
        with native_switch(enabled), pytest.MonkeyPatch.context() as mp:
            mp.setattr(function, "apply", lambda *a, f=function.apply, calls=calls: calls.append(1) or f(*a))
            out, _ = module(x)
            grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
            module.eval()
            evaluated, _ = module(x)
        assert len(calls) == (8 if enabled else 0)  # 2 layers x 2 directions, training and eval
        results.append((out, *grads, *module.buffers(), evaluated))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("input_size", [2, 7], ids=["xp-recomputed", "xp-kept"])
@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_scaled_variant_matches_pytorch_loop(reverse: bool, input_size: int, proj: int) -> None:
    """ "scaled": the separate variant with LN(W_ih x) times the mean absolute value of x_t; values and every
    gradient (x's through the scale too) against the PyTorch loop fed those input gates."""
    gen = torch.Generator().manual_seed(12)
    hidden, steps, batch = 4, 5, 3
    out_size = proj or hidden

    def rand(*shape: int, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.7 + offset).requires_grad_()

    x, w_ih, gain_ih = (
        rand(steps, batch, input_size),
        rand(4 * hidden, input_size),
        rand(4, hidden, offset=1.0),
    )
    shift, h0, c0 = rand(4, hidden), rand(batch, out_size), rand(batch, hidden)
    w_hh, gain_hh = rand(4 * hidden, out_size), rand(4, hidden, offset=1.0)
    cell_w, cell_b = rand(hidden, offset=1.0), rand(hidden)
    w_hr = rand(out_size, hidden) if proj else None
    leaves = [x, w_ih, gain_ih, shift, h0, c0, w_hh, gain_hh, cell_w, cell_b, *([w_hr] if proj else [])]
    args = (h0, c0, w_hh, gain_hh, cell_w, cell_b, w_hr)
    result = LSTMLayerNormLayerNative.apply(x, w_ih, gain_ih, shift, *args, EPS, reverse, "scaled", True)
    got = torch.autograd.grad(weighted_loss(list(result)), leaves)
    magnitude = x.abs().mean(-1, keepdim=True).unsqueeze(-1)
    gates = gate_layer_norm(torch.nn.functional.linear(x, w_ih), gain_ih, EPS) * magnitude + shift
    ref = LSTMLayerNormFunction.apply(
        gates, h0, c0, w_hh, gain_hh, None, cell_w, cell_b, w_hr, EPS, False, reverse
    )
    assert_all_close(list(result), list(ref), ATOL_LOOPS, RTOL_LOOPS)
    expected = torch.autograd.grad(weighted_loss(list(ref)), leaves)
    assert_all_close(list(got), list(expected), ATOL_LOOPS, RTOL_LOOPS)


def test_scaled_variant_gradcheck() -> None:
    gen = torch.Generator().manual_seed(13)

    def rand(*shape: int, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.6 + offset).requires_grad_()

    hidden = 3
    inputs = (
        rand(4, 2, 2),
        rand(4 * hidden, 2),
        rand(4, hidden, offset=1.0),
        rand(4, hidden),
        rand(2, hidden),
        rand(2, hidden),
        rand(4 * hidden, hidden),
        rand(4, hidden, offset=1.0),
        rand(hidden, offset=1.0),
        rand(hidden),
    )

    def fn(*t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return LSTMLayerNormLayerNative.apply(*t, None, EPS, False, "scaled", True)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)
