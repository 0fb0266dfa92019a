"""The C++ time loop of the layer-normalised GRU (`rnn_stability.nn.native_gru`): parity with the PyTorch loops
and the naive reference in float64 (outputs and every gradient) for every variant, gradcheck, float32 accuracy,
the inference path and the fallback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor

import rnn_stability.nn.gru as gru_module
from rnn_stability.nn import GRU
from rnn_stability.nn.fused import GRULayerNormFunction
from rnn_stability.nn.fused_joint import GRUJointLayerNormFunction
from rnn_stability.nn.native_gru import GRULayerNormLayerNative
from tests.nn.inputs import flatten_output, make_case
from tests.nn.naive_reference import reference_forward
from tests.nn.native_cases import (
    ATOL_LOOPS,
    ATOL_REFERENCE,
    EPS,
    RTOL_LOOPS,
    _native_allowed,  # noqa: F401  (fixture, used by name)
    assert_all_close,
    kernel,  # noqa: F401  (fixture, used by name)
    native_switch,
    perturb,
    randn,
    weighted_loss,
)

pytestmark = [
    pytest.mark.usefixtures("kernel"),
    pytest.mark.filterwarnings("ignore:TF32 acceleration"),  # toggling oneDNN mentions Intel GPUs
]
# The variants the modules run in C++ ("scaled" is tested on the op itself below).
MODULE_VARIANTS = ("recurrent", "joint", "separate")
variants = pytest.mark.parametrize("variant", MODULE_VARIANTS)


@contextmanager
def spy() -> Iterator[dict[str, int]]:
    """Count the C++ and the PyTorch GRU loops run within the block."""
    calls = {"native": 0, "fused": 0}

    def wrap(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            calls[key] += 1
            return fn(*args)

        return counted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRULayerNormLayerNative, "apply", wrap("native", GRULayerNormLayerNative.apply))
        mp.setattr(gru_module, "run_inference", wrap("native", gru_module.run_inference))  # gradients off
        for function in (GRULayerNormFunction, GRUJointLayerNormFunction):
            mp.setattr(function, "apply", wrap("fused", function.apply))
        yield calls


def build(variant: str, dtype: torch.dtype = torch.float64, seed: int = 0, **options: Any) -> GRU:
    sizes = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True, **options}
    module = GRU(**sizes, layer_norm=variant, dtype=dtype)  # type: ignore[arg-type]
    return perturb(module, seed).eval()  # type: ignore[arg-type,return-value]


def run(
    module: GRU, x: Tensor, h0: Tensor, enabled: bool
) -> tuple[list[Tensor], list[Tensor], dict[str, int]]:
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    with native_switch(enabled), spy() as calls:
        out, h = module(x, h0)
        grads = torch.autograd.grad(weighted_loss([out, h]), [x, h0, *module.parameters()])
    return [out, h], list(grads), calls


@variants
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bias": False},
        {"residual": True, "input_size": 8, "batch_first": True},
        {"input_size": 1, "hidden_size": 6},  # narrow input: the backward recomputes W_ih x
    ],
    ids=["bias", "no-bias", "residual-batch-first", "recomputed-xp"],
)
def test_cpp_loop_matches_pytorch_loop_and_reference(variant: str, options: dict[str, Any]) -> None:
    module = build(variant, **options)
    x = randn(5, 3, module.input_size, seed=1)
    h0 = randn(4, 5 if module.batch_first else 3, module.hidden_size, seed=2)
    values, grads, calls = run(module, x, h0, True)
    assert calls == {"native": 4, "fused": 0}
    expected_values, expected_grads, calls = run(module, x, h0, False)
    assert calls == {"native": 0, "fused": 4}
    assert_all_close(values, expected_values, ATOL_LOOPS, RTOL_LOOPS)
    assert_all_close(grads, expected_grads, ATOL_LOOPS, RTOL_LOOPS)

    case = make_case(module, batch=3, steps=5, packed=False, with_h0=True, unbatched=False, seed=3)
    with spy() as calls:
        outs, state = flatten_output(module(case.input, case.hx), case, module.batch_first)
    assert calls["native"] == 4
    got = outs + list(state)
    got_grads = torch.autograd.grad(weighted_loss(got), case.leaves + list(module.parameters()))
    ref_outs, ref_state = reference_forward(module, case.sequences, case.state)
    ref = ref_outs + list(ref_state)
    ref_grads = torch.autograd.grad(weighted_loss(ref), case.leaves + list(module.parameters()))
    assert_all_close(got, ref, ATOL_REFERENCE)
    assert_all_close(list(got_grads), list(ref_grads), ATOL_REFERENCE)


@variants
def test_several_backward_chunks(variant: str) -> None:
    """300 rows make the backward take 4 steps a chunk: 9 steps are 3 chunks, the last one partial."""
    module = build(variant, hidden_size=4, input_size=5)
    x, h0 = randn(9, 300, 5, seed=4), randn(4, 300, 4, seed=5)
    values, grads, _ = run(module, x, h0, True)
    expected_values, expected_grads, _ = run(module, x, h0, False)
    assert_all_close(values, expected_values, ATOL_LOOPS, RTOL_LOOPS)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_all_close([got], [want], 1e-12 * max(1.0, want.abs().max().item()), 1e-9)


@pytest.mark.parametrize("variant", [*MODULE_VARIANTS, "scaled"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gradcheck(variant: str, reverse: bool, bias: bool) -> None:
    gen = torch.Generator().manual_seed(7)

    def rand(*shape: int, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.6 + offset).requires_grad_()

    hidden = 3
    args = [
        rand(4, 2, 2),
        rand(3 * hidden, 2),
        rand(3, hidden, offset=1.0) if variant in ("separate", "scaled") else None,
        rand(3, hidden) if bias else None,
        rand(hidden) if bias else None,
        rand(2, hidden),
        rand(3 * hidden, hidden),
        rand(3, hidden, offset=1.0),
    ]
    present = [k for k, a in enumerate(args) if a is not None]

    def fn(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        full = list(args)
        for k, t in zip(present, tensors, strict=True):
            full[k] = t
        return GRULayerNormLayerNative.apply(*full, EPS, reverse, variant, True)

    inputs = tuple(args[k] for k in present)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)  # type: ignore[arg-type]


@variants
def test_float32_close_to_float64(variant: str) -> None:
    """Small (ATen products) and H = 128 with 8 rows (oneDNN products) in float32, against float64."""
    for hidden, batch in ((8, 4), (128, 8)):
        module = build(variant, input_size=16, hidden_size=hidden, seed=3)
        with torch.no_grad():
            for p in module.parameters():
                if p.dim() == 2:
                    p.mul_(min(1.0, 4 / hidden**0.5))
        x, h0 = randn(6, batch, 16, seed=3), randn(4, batch, hidden, seed=4).mul(0.5)
        expected_values, expected_grads, _ = run(module, x, h0, True)
        low = build(variant, input_size=16, hidden_size=hidden, seed=3).float()
        low.load_state_dict(module.state_dict())
        values, grads, calls = run(low, x.float(), h0.float(), True)
        assert calls["native"] == 4 and values[0].dtype == torch.float32
        assert_all_close([v.double() for v in values], [v.detach() for v in expected_values], 1e-4, 1e-4)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got.double(), want, atol=5e-4 * want.abs().max().item(), rtol=0)


@variants
def test_no_grad_equals_grad_outputs_and_keeps_nothing(variant: str) -> None:
    from rnn_stability.nn import native

    module = build(variant, dtype=torch.float32)
    x, h0 = randn(50, 3, 3, dtype=torch.float32), randn(4, 3, 4, dtype=torch.float32)
    out, h = module(x.requires_grad_(), h0)
    native.empty_cache()
    before = native.workspace_bytes()
    for context in (torch.no_grad, torch.inference_mode):
        with spy() as calls, context():
            out_i, h_i = module(x, h0)
        assert calls["native"] == 4 and not out_i.requires_grad
        assert torch.equal(out_i, out) and torch.equal(h_i, h)
    assert native.workspace_bytes() - before < 50 * 3 * 4 * 3 * 4  # less than one layer's 50 steps of gates


def test_environment_variable_runs_the_pytorch_loop() -> None:
    module = build("separate")
    x, h0 = randn(3, 2, 3), randn(4, 2, 4)
    _, _, calls = run(module, x, h0, False)
    assert calls == {"native": 0, "fused": 4}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("input_size", [2, 7], ids=["xp-recomputed", "xp-kept"])
def test_scaled_variant_matches_pytorch_loop(reverse: bool, input_size: int) -> None:
    """ "scaled": the separate variant with LN(W_ih x) times the mean absolute value of x_t; values and every
    gradient (x's through the scale too) against the PyTorch loop fed those input gates."""
    from rnn_stability.nn.layer_norm import gate_layer_norm

    gen = torch.Generator().manual_seed(11)
    hidden, steps, batch = 4, 5, 3

    def rand(*shape: int, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.7 + offset).requires_grad_()

    x, w_ih, gain_ih = (
        rand(steps, batch, input_size),
        rand(3 * hidden, input_size),
        rand(3, hidden, offset=1.0),
    )
    shift, bias_hn, h0 = rand(3, hidden), rand(hidden), rand(batch, hidden)
    w_hh, gain_hh = rand(3 * hidden, hidden), rand(3, hidden, offset=1.0)
    leaves = [x, w_ih, gain_ih, shift, bias_hn, h0, w_hh, gain_hh]
    out, h = GRULayerNormLayerNative.apply(
        x, w_ih, gain_ih, shift, bias_hn, h0, w_hh, gain_hh, EPS, reverse, "scaled", True
    )
    got = torch.autograd.grad(weighted_loss([out, h]), leaves)
    magnitude = x.abs().mean(-1, keepdim=True).unsqueeze(-1)
    gates = gate_layer_norm(torch.nn.functional.linear(x, w_ih), gain_ih, EPS) * magnitude + shift
    ref = GRULayerNormFunction.apply(gates, h0, w_hh, gain_hh, None, bias_hn, EPS, False, reverse)
    assert_all_close([out, h], list(ref), ATOL_LOOPS, RTOL_LOOPS)
    expected = torch.autograd.grad(weighted_loss(list(ref)), leaves)
    assert_all_close(list(got), list(expected), ATOL_LOOPS, RTOL_LOOPS)
