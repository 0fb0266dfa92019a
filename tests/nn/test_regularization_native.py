"""Recurrent dropout and zoneout in the C++ loops (`rnn_stability.nn.native` / `native_gru`).

Op level: given the same masks, the C++ LSTM and GRU loops match the autograd step loops of
`rnn_stability.nn.recurrence` in float64 (outputs, final states and every gradient) for every variant,
`"none"` (no layer norm) included, with and without a projection, in both directions, in training (0/1 keep
masks) and in eval (zoneout's probability); gradcheck with the mask arguments given. Module level: which loop
runs (with the C++ build disabled: the hand-written-backward loops of `rnn_stability.nn.fused` with layer
norm, which take the masks too), and the variants the naive reference does not cover (`"separate"`,
`"scaled"`) against the PyTorch loops.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import rnn_stability.nn.gru as gru_module
import rnn_stability.nn.lstm as lstm_module
from rnn_stability.nn import GRU, LSTM, regularization
from rnn_stability.nn.fused import GRULayerNormFunction, LSTMLayerNormFunction
from rnn_stability.nn.native import LSTMLayerNormLayerNative
from rnn_stability.nn.native_gru import GRULayerNormLayerNative, gru_shift
from rnn_stability.nn.recurrence import (
    gru_input_gates,
    gru_layer_norm_sequence,
    lstm_input_gates,
    lstm_layer_norm_sequence,
)
from tests.nn.native_cases import ENV, _native_allowed, kernel  # noqa: F401  (fixtures, used by name)

pytestmark = pytest.mark.usefixtures("kernel")

DT = torch.float64
T, B, IN, H = 5, 3, 4, 6
EPS = 1e-5
VARIANTS = ["none", "recurrent", "joint", "separate", "scaled"]


@pytest.fixture(autouse=True)
def _masks_from_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module-level comparisons here switch the kernel off for one run, which would also switch the masks to
    another stream (`regularization._bernoulli`): both runs draw them from torch's generator instead."""
    monkeypatch.setattr(regularization, "_mask_ops", lambda like, dtype: None)


def _case(lstm: bool, variant: str, proj: bool, rec: bool, zoneout: bool, p: float | None, seed: int = 0):
    """Parameters (leaves), the masks (`p` given: zoneout's eval probability instead of 0/1 masks) and the
    loss weights of one op-level case."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=DT, generator=g)

    gates, width = (4, 2 if proj else H) if lstm else (3, H)
    params = {"x": rn(T, B, IN), "w_ih": 0.5 * rn(gates * H, IN), "w_hh": 0.5 * rn(gates * H, width)}
    params.update(b_ih=0.3 * rn(gates * H), b_hh=0.3 * rn(gates * H), h0=rn(B, width))
    if lstm:
        params["c0"] = rn(B, H)
        if proj:
            params["w_hr"] = 0.5 * rn(width, H)
    if variant != "none":
        params["gain"] = 1 + 0.2 * rn(gates, H)
        if lstm:
            params.update(cell_weight=1 + 0.2 * rn(H), cell_bias=0.2 * rn(H))
    if variant in ("separate", "scaled"):
        params["gain_ih"] = 1 + 0.2 * rn(gates, H)
    params = {k: v.requires_grad_() for k, v in params.items()}
    mask = (torch.rand(B, width, dtype=DT, generator=g) > 0.4).to(DT) / 0.6 if rec else None
    zone: list[Tensor | float | None] = [None, None]
    if zoneout:
        zone = [
            (torch.rand(T, B, w, dtype=DT, generator=g) < 0.3).to(DT) if p is None else p for w in (width, H)
        ]
    weights = [rn(T, B, width), rn(B, width), rn(B, H)]
    return params, mask, zone if lstm else zone[:1], weights


def _cpp(lstm: bool, variant: str, P: dict[str, Tensor], mask: Tensor | None, zone: list, reverse: bool):
    empty = torch.empty(0, dtype=DT)
    if lstm:
        shift = (P["b_ih"] + P["b_hh"]).view(4, H)
        return LSTMLayerNormLayerNative.apply(
            P["x"], P["w_ih"], P.get("gain_ih"), shift, P["h0"], P["c0"], P["w_hh"], P.get("gain", empty),
            P.get("cell_weight", empty), P.get("cell_bias"), P.get("w_hr"), EPS, reverse, variant, True, mask,
            *zone,
        )  # fmt: skip
    shift, bias_hn = gru_shift(P["b_ih"], P["b_hh"])
    return GRULayerNormLayerNative.apply(
        P["x"], P["w_ih"], P.get("gain_ih"), shift, bias_hn, P["h0"], P["w_hh"], P.get("gain", empty), EPS,
        reverse, variant, True, mask, *zone,
    )  # fmt: skip


def _reference(
    lstm: bool, variant: str, P: dict[str, Tensor], mask: Tensor | None, zone: list, reverse: bool
):
    joint, scaled = variant == "joint", variant == "scaled"
    loop_zone = tuple(k if k is None or isinstance(k, float) else list(k.unbind(0)) for k in zone)
    loop_zone = loop_zone if any(k is not None for k in zone) else ()
    if lstm:
        shift = (P["b_ih"] + P["b_hh"]).view(4, H)
        gates = lstm_input_gates(P["x"], P["w_ih"], P.get("gain_ih"), shift, EPS, joint, scaled=scaled)
        params = (
            P["w_hh"],
            P.get("gain"),
            shift if joint else None,
            P.get("cell_weight"),
            P.get("cell_bias"),
        )
        out, *final = lstm_layer_norm_sequence(
            list(gates.unbind(0)),
            P["h0"],
            P["c0"],
            (*params, P.get("w_hr"), EPS, joint),
            reverse,
            mask,
            loop_zone,
        )
    else:
        gates, joint_shift, bias_hn = gru_input_gates(
            P["x"], P["w_ih"], P.get("gain_ih"), P["b_ih"], P["b_hh"], EPS, joint, scaled=scaled
        )
        params = (P["w_hh"], P.get("gain"), joint_shift, bias_hn, EPS, joint)
        out, *final = gru_layer_norm_sequence(
            list(gates.unbind(0)), P["h0"], params, reverse, mask, loop_zone
        )
    return (out.view(T, B, -1), *final)


def _cases(lstm: bool) -> list[tuple[Any, ...]]:
    cases = []
    for variant, proj, rec, zoneout, reverse, p in itertools.product(
        VARIANTS, [False, True] if lstm else [False], [False, True], [False, True], [False, True], [None, 0.3]
    ):
        if (rec or zoneout) and not (p is not None and rec):  # eval draws no dropout mask
            cases.append((variant, proj, rec, zoneout, reverse, p))
    return cases


@pytest.mark.parametrize("lstm", [True, False], ids=["lstm", "gru"])
def test_cpp_loops_match_the_autograd_loops_with_the_same_masks(lstm: bool) -> None:
    for variant, proj, rec, zoneout, reverse, p in _cases(lstm):
        P, mask, zone, weights = _case(lstm, variant, proj, rec, zoneout, p)
        got, want = (
            _cpp(lstm, variant, P, mask, zone, reverse),
            _reference(lstm, variant, P, mask, zone, reverse),
        )
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
        grads = [
            torch.autograd.grad(
                sum((o * w).sum() for o, w in zip(r, weights, strict=False)), list(P.values())
            )
            for r in (got, want)
        ]
        for name, g, w in zip(P, *grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("lstm", [True, False], ids=["lstm", "gru"])
@pytest.mark.parametrize("variant", ["none", "joint", "scaled"])
def test_gradcheck_with_masks(lstm: bool, variant: str) -> None:
    """Training (0/1 masks, recurrent dropout, projection for the LSTM) and eval (zoneout's probability)."""
    for proj, rec, p, seed in ((lstm, True, None, 1), (False, False, 0.3, 2)):
        P, mask, zone, _ = _case(lstm, variant, proj, rec=rec, zoneout=True, p=p, seed=seed)

        def f(*leaves: Tensor, names: tuple[str, ...] = tuple(P), mask=mask, zone=zone) -> tuple[Tensor, ...]:
            return tuple(_cpp(lstm, variant, dict(zip(names, leaves, strict=True)), mask, zone, False))

        assert torch.autograd.gradcheck(f, tuple(P.values()))


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"native": 0, "fused": 0, "loop": 0}

    def wrap(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[key] += 1
            return fn(*args, **kwargs)

        return counted

    for function in (LSTMLayerNormLayerNative, GRULayerNormLayerNative):
        monkeypatch.setattr(function, "apply", wrap("native", function.apply))
    for module in (lstm_module, gru_module):  # with gradients off the modules call the ops directly
        monkeypatch.setattr(module, "run_inference", wrap("native", module.run_inference))
    for function in (LSTMLayerNormFunction, GRULayerNormFunction):
        monkeypatch.setattr(function, "apply", wrap("fused", function.apply))
    for cls in (LSTM, GRU):
        monkeypatch.setattr(cls, "_layer_norm_sequence", staticmethod(wrap("loop", cls._layer_norm_sequence)))
    return calls


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, "recurrent", True])
@pytest.mark.parametrize("options", [{"recurrent_dropout": 0.3}, {"zoneout": 0.2}])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_which_loop_runs(
    cls, layer_norm, options: dict, training: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = cls(3, 4, num_layers=2, bidirectional=True, layer_norm=layer_norm, **options).train(training)
    calls = _spy(monkeypatch)
    module(torch.randn(5, 2, 3))
    plain_eval = not training and "recurrent_dropout" in options and not layer_norm  # torch's own kernel
    assert calls == {"native": 0 if plain_eval else 4, "fused": 0, "loop": 0}
    # Without the C++ build: the hand-written-backward loops with layer norm, the autograd loop without.
    monkeypatch.setenv(ENV, "0")
    calls.update(native=0, fused=0, loop=0)
    module(torch.randn(5, 2, 3))
    runs = 0 if plain_eval else 4
    assert calls == {"native": 0, "fused": runs if layer_norm else 0, "loop": 0 if layer_norm else runs}


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [True, "separate", False])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_matches_the_pytorch_loops(
    cls, layer_norm, training: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variants the naive reference lacks: the C++ loop against the PyTorch loops given the same masks."""
    zoneout = (0.2, 0.4) if cls is LSTM else 0.3
    extra = {"proj_size": 2} if cls is LSTM else {}
    torch.manual_seed(0)
    module = cls(3, 4, num_layers=2, bidirectional=True, layer_norm=layer_norm, dtype=DT, **extra,
                 recurrent_dropout=0.3, zoneout=zoneout).train(training)  # fmt: skip
    x = torch.randn(5, 2, 3, dtype=DT, requires_grad=True)
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv(ENV, native)
        module.mask_generator = torch.Generator().manual_seed(4)
        out, state = module(x)
        state = state if isinstance(state, tuple) else (state,)
        loss = (out * torch.linspace(0.5, 1.5, out.numel(), dtype=DT).view_as(out)).sum() + sum(
            (0.3 * s).sum() for s in state
        )
        results.append((out, *state, *torch.autograd.grad(loss, [x, *module.parameters()])))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_eval_zoneout_is_the_expectation_in_float32(cls) -> None:
    """float32 (oneDNN products where they apply) in eval: the C++ loop against the PyTorch loop."""
    torch.manual_seed(0)
    module = cls(8, 16, zoneout=0.25).eval()
    x = torch.randn(7, 3, 8)
    with pytest.MonkeyPatch.context() as mp:
        got = module(x)[0]
        mp.setenv(ENV, "0")
        want = module(x)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_edge_cases_match_the_pytorch_loops(cls, layer_norm, monkeypatch: pytest.MonkeyPatch) -> None:
    """One step, an empty batch, a training-mode forward without gradients, eval under inference mode."""
    module = cls(3, 5, num_layers=2, layer_norm=layer_norm, dtype=DT, recurrent_dropout=0.3, zoneout=0.2)
    cases = [(torch.randn(1, 2, 3, dtype=DT), True), (torch.randn(4, 0, 3, dtype=DT), True)]
    cases += [(torch.randn(4, 2, 3, dtype=DT), True), (torch.randn(4, 2, 3, dtype=DT), False)]
    for k, (x, training) in enumerate(cases):
        module.train(training)
        outs = []
        for native in ("1", "0"):
            monkeypatch.setenv(ENV, native)
            module.mask_generator = torch.Generator().manual_seed(k)
            context = torch.no_grad() if training else torch.inference_mode()
            with context:
                outs.append(module(x)[0])
        torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=1e-9)
