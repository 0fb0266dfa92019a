"""Outputs and gradients of the C++ time loop of the layer-normalised LSTM (:mod:`rnn_stability.nn.native`).

Parity with the PyTorch loop and the naive reference, ``gradcheck`` of the autograd binding, partial
``requires_grad``, non-contiguous inputs, the inference path (no saved buffers), float32 accuracy and
gradient accumulation, for each ``layer_norm`` variant the loop computes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor

from rnn_stability.nn import LSTM
from rnn_stability.nn.fused import LSTMLayerNormFunction
from rnn_stability.nn.layer_norm import LAYER_NORM_VARIANTS
from tests.nn.inputs import Case, flatten_output, make_case
from tests.nn.naive_reference import reference_forward
from tests.nn.native_cases import (
    ATOL_LOOPS,
    ATOL_REFERENCE,
    EPS,
    NATIVE_ARGS,
    RTOL_LOOPS,
    PathSpy,
    _native_allowed,  # noqa: F401  (fixture, used by name)
    _values_and_grads,
    apply_native,
    assert_all_close,
    build,
    kernel,  # noqa: F401  (fixture, used by name)
    native_args,
    native_switch,
    non_contiguous,
    randn,
    spy_paths,
    weighted_loss,
)

pytestmark = pytest.mark.usefixtures("kernel")
# `LSTMLayerNormNative` takes the input projection, not the input: the "scaled" variant, which multiplies the
# normalised projection by the input's magnitude, runs in `LSTMLayerNormLayerNative` (tests/nn/test_native_layer.py).
PROJECTION_VARIANTS = tuple(variant for variant in LAYER_NORM_VARIANTS if variant != "scaled")
variants = pytest.mark.parametrize("variant", PROJECTION_VARIANTS)


# ---- 1. parity with the PyTorch loop and the naive reference -------------------------------------------------

configs = st.fixed_dictionaries(
    {
        "num_layers": st.integers(1, 2),
        "bidirectional": st.booleans(),
        "batch_first": st.booleans(),
        "proj": st.booleans(),
        "bias": st.booleans(),
        "residual": st.booleans(),
        "residual_first": st.booleans(),
        "with_h0": st.booleans(),
        "unbatched": st.booleans(),
        "steps": st.sampled_from([1, 2, 5]),
        "batch": st.integers(1, 3),
        "variant": st.sampled_from(LAYER_NORM_VARIANTS),
    }
)


def _config_module(cfg: dict[str, Any], seed: int) -> LSTM:
    hidden, proj = 4, 2 if cfg["proj"] else 0
    width = (proj or hidden) * (2 if cfg["bidirectional"] else 1)
    return build(
        # input as wide as the layer output makes layer 0 residual too (with ``residual=True``)
        input_size=width if cfg["residual_first"] else 3,
        hidden_size=hidden,
        num_layers=cfg["num_layers"],
        proj_size=proj,
        bias=cfg["bias"],
        bidirectional=cfg["bidirectional"],
        batch_first=cfg["batch_first"],
        residual=cfg["residual"],
        seed=seed,
        layer_norm=cfg["variant"],
    )


def _config_case(module: LSTM, cfg: dict[str, Any], seed: int) -> Case:
    return make_case(
        module,
        batch=cfg["batch"],
        steps=cfg["steps"],
        packed=False,
        with_h0=cfg["with_h0"],
        unbatched=cfg["unbatched"],
        seed=seed,
    )


def _module_run(module: LSTM, case: Case, enabled: bool) -> tuple[list[Tensor], list[Tensor], PathSpy]:
    """Outputs (per sequence, then final states) and gradients of inputs, state and parameters."""
    with native_switch(enabled), spy_paths() as spy:
        outs, state = flatten_output(module(case.input, case.hx), case, module.batch_first)
        values = outs + list(state)
        gradients = torch.autograd.grad(weighted_loss(values), case.leaves + list(module.parameters()))
    return values, list(gradients), spy


_FULL = dict(num_layers=2, bidirectional=True, proj=True, bias=True, residual=True, residual_first=True)


@settings(max_examples=30, deadline=None)
@given(cfg=configs, seed=st.integers(0, 3))
@example(
    cfg=dict(_FULL, batch_first=True, with_h0=True, unbatched=False, steps=5, batch=3, variant="joint"),
    seed=0,
)
@example(
    cfg=dict(_FULL, batch_first=True, with_h0=True, unbatched=False, steps=5, batch=3, variant="recurrent"),
    seed=0,
)
@example(
    cfg=dict(_FULL, batch_first=True, with_h0=True, unbatched=False, steps=5, batch=3, variant="separate"),
    seed=0,
)
@example(
    cfg=dict(
        _FULL, bias=False, batch_first=False, with_h0=True, unbatched=False, steps=1, batch=2, variant="joint"
    ),
    seed=1,
)
@example(
    cfg=dict(
        num_layers=2,
        bidirectional=False,
        proj=False,
        bias=True,
        residual=True,
        residual_first=True,
        batch_first=True,
        with_h0=True,
        unbatched=True,
        steps=5,
        batch=1,
        variant="recurrent",
    ),
    seed=2,
)
def test_cpp_loop_matches_pytorch_loop_and_naive_reference(cfg: dict[str, Any], seed: int) -> None:
    module = _config_module(cfg, seed)
    case = _config_case(module, cfg, seed)
    directions = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)

    values, gradients, spy = _module_run(module, case, enabled=True)
    assert spy.calls == {"native": directions, "fused": 0, "loop": 0}
    torch_values, torch_gradients, torch_spy = _module_run(module, case, enabled=False)
    assert torch_spy.calls == {"native": 0, "fused": directions, "loop": 0}
    assert_all_close(values, torch_values, ATOL_LOOPS, RTOL_LOOPS)
    assert_all_close(gradients, torch_gradients, ATOL_LOOPS, RTOL_LOOPS)

    ref_outs, ref_state = reference_forward(module, case.sequences, case.state)
    ref_values = ref_outs + list(ref_state)
    ref_gradients = torch.autograd.grad(weighted_loss(ref_values), case.leaves + list(module.parameters()))
    assert_all_close(values, ref_values, ATOL_REFERENCE)
    assert_all_close(gradients, list(ref_gradients), ATOL_REFERENCE)


@variants
def test_parity_with_large_gains_and_spread_cell_state(variant: str) -> None:
    """Gains far from 1 and a large initial state saturate some gates: the loops still agree with the reference."""
    module = build(
        input_size=3, hidden_size=8, num_layers=2, bidirectional=True, proj_size=3, seed=5, layer_norm=variant
    )
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("layer_norm"):
                p.mul_(3.0)
    case = make_case(module, batch=4, steps=7, packed=False, with_h0=True, unbatched=False, seed=5)
    assert case.state is not None
    with torch.no_grad():
        for s in case.state:  # the same tensors as ``case.hx``: a large initial cell state
            s.mul_(4.0)
    values, gradients, spy = _module_run(module, case, enabled=True)
    assert spy.calls["native"] == 4
    torch_values, torch_gradients, _ = _module_run(module, case, enabled=False)
    assert_all_close(values, torch_values, ATOL_LOOPS, RTOL_LOOPS)
    ref_outs, ref_state = reference_forward(module, case.sequences, case.state)
    ref_gradients = torch.autograd.grad(
        weighted_loss(ref_outs + list(ref_state)), case.leaves + list(module.parameters())
    )
    assert_all_close(values, ref_outs + list(ref_state), ATOL_REFERENCE)
    # Some gradients explode here (up to ~5e5 with "recurrent", whose input projection is not normalised): float64
    # rounding, amplified by the backward, leaves up to ~3e-10 of each one's scale between two implementations.
    for got, loops, reference in zip(gradients, torch_gradients, ref_gradients, strict=True):
        scale = max(1.0, reference.abs().max().item())
        assert_all_close([got], [loops], 1e-9 * scale)
        assert_all_close([got], [reference], 1e-8 * scale)


# ---- 2. gradcheck of the autograd binding --------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    ("shift", "cell_bias", "proj"),
    [(True, True, 2), (False, False, 0), (True, False, 0), (False, True, 2)],
    ids=["all", "none", "shift", "cell_bias+weight_hr"],
)
@variants
def test_gradcheck_native_function(
    shift: bool, cell_bias: bool, proj: int, reverse: bool, variant: str
) -> None:
    args = native_args(shift=shift, cell_bias=cell_bias, proj=proj, variant=variant)
    names = [name for name in NATIVE_ARGS if args[name] is not None]
    inputs = tuple(args[name].requires_grad_() for name in names)  # type: ignore[union-attr]

    def fn(*tensors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return apply_native(dict(args, **dict(zip(names, tensors, strict=True))), reverse, variant)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@variants
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_native_function_partial_requires_grad(reverse: bool, variant: str) -> None:
    """Asking for one input's gradient gives the same value as asking for all of them."""
    args = native_args(proj=2, steps=4, variant=variant)
    names = [name for name in NATIVE_ARGS if args[name] is not None]
    full = {name: args[name].detach().requires_grad_() for name in names}  # type: ignore[union-attr]
    out, h, c = apply_native(dict(args, **full), reverse, variant)
    all_grads = torch.autograd.grad(weighted_loss([out, h, c]), [full[n] for n in names])
    for name, expected in zip(names, all_grads, strict=True):
        single: dict[str, Tensor | None] = {n: args[n].detach() for n in names}  # type: ignore[union-attr]
        single[name] = args[name].detach().requires_grad_()  # type: ignore[union-attr]
        out, h, c = apply_native(dict(args, **single), reverse, variant)
        (grad,) = torch.autograd.grad(weighted_loss([out, h, c]), [single[name]])
        torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


@variants
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_native_function_matches_pytorch_fused_function(reverse: bool, variant: str) -> None:
    """Direct call against :class:`LSTMLayerNormFunction` fed the input gates of the variant; sum losses, which
    hand the backward expanded (stride 0) gradients of ``h_n`` and ``c_n``."""
    args = native_args(steps=5, batch=3, hidden=4, proj=3, variant=variant)
    leaves = {n: t.requires_grad_() for n, t in args.items() if t is not None}
    out, h, c = apply_native(args, reverse, variant)
    loss = out.sum() + h.sum() * 0.5 + c.sum() * 2.0
    got = torch.autograd.grad(loss, list(leaves.values()))

    xp, shift = leaves["xp"], leaves["shift"]
    joint = variant == "joint"
    if variant == "separate":
        gates = torch.addcmul(
            shift, torch.nn.functional.layer_norm(xp, [xp.size(-1)], eps=EPS), leaves["gain_ih"]
        )
    else:
        gates = xp if joint else xp + shift
    ref = LSTMLayerNormFunction.apply(
        gates,
        leaves["h0"],
        leaves["c0"],
        leaves["weight_hh"],
        leaves["gain_hh"],
        shift if joint else None,
        leaves["cell_weight"],
        leaves["cell_bias"],
        leaves["weight_hr"],
        EPS,
        joint,
        reverse,
    )
    assert_all_close([out, h, c], list(ref), ATOL_LOOPS, RTOL_LOOPS)
    ref_loss = ref[0].sum() + ref[1].sum() * 0.5 + ref[2].sum() * 2.0
    expected = torch.autograd.grad(ref_loss, list(leaves.values()))
    assert_all_close(list(got), list(expected), ATOL_LOOPS, RTOL_LOOPS)


# ---- 3. non-contiguous inputs --------------------------------------------------------------------------------


@variants
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_native_function_non_contiguous_state_and_weights(reverse: bool, variant: str) -> None:
    """Strided input projection, state and weight matrices give the values and gradients of contiguous ones."""
    args = native_args(steps=4, batch=3, hidden=4, proj=2, variant=variant)
    strided = ("xp", "h0", "c0", "weight_hh", "weight_hr")

    def layout(name: str, t: Tensor) -> Tensor:
        if name in strided:
            t = non_contiguous(t)
            assert not t.is_contiguous()
        return t

    expected = _values_and_grads(args, lambda _, t: t, reverse, variant)
    # Matrix products of other layouts may round differently: not bit-identical.
    assert_all_close(_values_and_grads(args, layout, reverse, variant), expected, 1e-12)


@pytest.mark.parametrize(
    ("name", "variant"),
    [("gain_ih", "separate"), ("shift", "separate"), ("shift", "joint"), ("shift", "recurrent")]
    + [
        (name, variant) for name in ("gain_hh", "cell_weight", "cell_bias") for variant in PROJECTION_VARIANTS
    ],
)
def test_native_function_non_contiguous_layer_norm_parameters(name: str, variant: str) -> None:
    args = native_args(steps=4, batch=3, hidden=4, proj=2, variant=variant)

    def layout(arg: str, t: Tensor) -> Tensor:
        return non_contiguous(t) if arg == name else t

    expected = _values_and_grads(args, lambda _, t: t, False, variant)
    got = _values_and_grads(args, layout, False, variant)
    assert_all_close(got, expected, ATOL_LOOPS, RTOL_LOOPS)


@variants
def test_module_with_non_contiguous_gains_matches_pytorch_loop(variant: str) -> None:
    module = build(num_layers=2, bidirectional=True, layer_norm=variant)
    params = {
        name: non_contiguous(p.detach()) if name.startswith("layer_norm") else p.detach()
        for name, p in module.named_parameters()
    }
    x = randn(4, 3, 3)
    with spy_paths() as spy:
        out, (h, c) = torch.func.functional_call(module, params, (x,))
    assert spy.calls["native"] == 4
    with native_switch(False):
        expected_out, (expected_h, expected_c) = torch.func.functional_call(module, params, (x,))
    assert_all_close([out, h, c], [expected_out, expected_h, expected_c], ATOL_LOOPS, RTOL_LOOPS)


# ---- 4. inference path ---------------------------------------------------------------------------------------


@variants
@pytest.mark.parametrize(
    "options",
    [
        dict(num_layers=2, bidirectional=True, proj_size=2),
        dict(bias=False, batch_first=True),
        dict(num_layers=2, bidirectional=True, residual=True, input_size=8),
    ],
    ids=["bi-proj", "nobias-batch-first", "bi-residual"],
)
def test_no_grad_outputs_equal_grad_outputs(options: dict[str, Any], variant: str) -> None:
    """Without gradients the C++ loop saves nothing and reuses one set of per-step buffers: same values."""
    module = build(**options, layer_norm=variant)
    x = randn(6, 3, module.input_size, seed=1)  # 6 steps, or 6 sequences of 3 steps when batch_first
    layers = module.num_layers * (2 if module.bidirectional else 1)
    batch = x.size(0 if module.batch_first else 1)
    h0 = randn(layers, batch, module.proj_size or module.hidden_size, seed=2)
    c0 = randn(layers, batch, module.hidden_size, seed=3)
    with spy_paths() as spy:
        out, (h, c) = module(x.requires_grad_(), (h0, c0))
    assert spy.calls["native"] == layers and out.requires_grad
    for context in (torch.no_grad, torch.inference_mode):
        with spy_paths() as spy, context():
            out_i, (h_i, c_i) = module(x, (h0, c0))
        assert spy.calls == {"native": layers, "fused": 0, "loop": 0}
        assert not out_i.requires_grad
        for a, b in zip((out_i, h_i, c_i), (out, h, c), strict=True):
            assert torch.equal(a, b)


@variants
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj", [0, 2], ids=["no-proj", "proj"])
def test_native_function_without_saving_equals_with_saving(reverse: bool, proj: int, variant: str) -> None:
    """``save=False`` (nothing needs a gradient) reuses per-step buffers; values are those of ``save=True``."""
    args = native_args(steps=6, batch=3, hidden=4, proj=proj, seed=7, variant=variant)
    with torch.no_grad():
        unsaved = apply_native(args, reverse, variant)
    detached = apply_native(
        args, reverse, variant
    )  # grad mode on but no input requires grad: also save=False
    saved_args = {n: t.detach().requires_grad_() if t is not None else None for n, t in args.items()}
    saved = apply_native(saved_args, reverse, variant)
    assert all(t.requires_grad for t in saved) and not any(t.requires_grad for t in detached)
    for a, b, c in zip(unsaved, detached, saved, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)


# ---- 5. float32 ----------------------------------------------------------------------------------------------


@variants
def test_float32_close_to_float64(variant: str) -> None:
    sizes = dict(
        input_size=5, hidden_size=8, num_layers=2, bidirectional=True, proj_size=5, layer_norm=variant
    )
    module = build(**sizes, seed=3)  # type: ignore[arg-type]
    x = randn(7, 4, 5, seed=3).requires_grad_()
    h0, c0 = randn(4, 4, 5, seed=4).mul(0.5), randn(4, 4, 8, seed=5).mul(0.5)
    out, (h, c) = module(x, (h0, c0))
    expected = [out, h, c]
    expected_grads = torch.autograd.grad(weighted_loss(expected), [x, *module.parameters()])

    low = build(**sizes, seed=3).float()  # type: ignore[arg-type]
    x32 = x.detach().float().requires_grad_()
    with spy_paths() as spy:
        out, (h, c) = low(x32, (h0.float(), c0.float()))
    assert spy.calls["native"] == 4
    got = [out, h, c]
    assert all(t.dtype == torch.float32 for t in got)
    got_grads = torch.autograd.grad(weighted_loss(got), [x32, *low.parameters()])
    assert_all_close([t.double() for t in got], [t.detach() for t in expected], atol=1e-4, rtol=1e-4)
    # Gradients reach ~300 here (a weighted sum over every output): compare relative to each one's scale.
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        scale = expected_grad.abs().max().item()
        torch.testing.assert_close(got_grad.double(), expected_grad, atol=5e-4 * scale, rtol=0)


# ---- 6. gradient accumulation --------------------------------------------------------------------------------


@pytest.mark.parametrize("proj_size", [0, 2])
def test_two_backward_passes_accumulate(proj_size: int) -> None:
    module = build(num_layers=2, bidirectional=True, proj_size=proj_size, residual=True, input_size=3)
    x = randn(5, 3, 3, seed=1).requires_grad_()
    h0 = randn(4, 3, proj_size or 4, seed=2).requires_grad_()
    c0 = randn(4, 3, 4, seed=3).requires_grad_()
    leaves = [x, h0, c0, *module.parameters()]
    with native_switch(False):
        out, (h, c) = module(x, (h0, c0))
        expected = torch.autograd.grad(weighted_loss([out, h, c]), leaves)

    with spy_paths() as spy:
        out, (h, c) = module(x, (h0, c0))
    assert spy.calls["native"] == 4
    loss = weighted_loss([out, h, c])
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in leaves]  # type: ignore[union-attr]
    assert_all_close(first, list(expected), ATOL_LOOPS, RTOL_LOOPS)
    loss.backward()
    for t, g in zip(leaves, first, strict=True):
        torch.testing.assert_close(t.grad, 2 * g, atol=1e-12, rtol=1e-12)
    # Distinct leaves own distinct memory (no gradient buffer shared between two of them).
    pointers = [t.grad.data_ptr() for t in leaves]  # type: ignore[union-attr]
    assert len(set(pointers)) == len(pointers)
