"""Shared helpers of the tests of the C++ time loop (:mod:`rnn_stability.nn.native`).

Fixtures (the built ops, a clean environment variable), the loop spy, module and argument builders, the
weighted loss and the tolerances used by :mod:`tests.nn.test_native_paths` and
:mod:`tests.nn.test_native_parity`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor

import rnn_stability.nn.lstm as lstm_module
from rnn_stability.nn import LSTM
from rnn_stability.nn.fused import LSTMLayerNormFunction
from rnn_stability.nn.native import LSTMLayerNormLayerNative, LSTMLayerNormNative
from tests.helpers import native_kernel_or_skip

ENV = "RNN_STABILITY_NATIVE"
EPS = 1e-5
# The C++ and the PyTorch loops evaluate the same float64 formulas: they agree to rounding.
ATOL_LOOPS = 1e-10
RTOL_LOOPS = 1e-10  # gradients of a weighted sum over all outputs reach a few hundred
# The naive reference normalises with its own hand-written formula, one sample at a time.
ATOL_REFERENCE = 1e-8


@pytest.fixture(scope="module")
def kernel() -> Any:
    """The built C++ ops; the module is skipped where they cannot be built (no compiler)."""
    return native_kernel_or_skip()


@pytest.fixture(autouse=True)
def _native_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the environment variable themselves; an outer ``RNN_STABILITY_NATIVE=0`` must not leak in."""
    monkeypatch.delenv(ENV, raising=False)


# ---- spying on the loops, building modules and inputs --------------------------------------------------------


class PathSpy:
    """Counts the calls of the three time loops of the layer-norm LSTM and keeps the C++ loop's outputs."""

    def __init__(self) -> None:
        self.calls = {"native": 0, "fused": 0, "loop": 0}
        self.native_outputs: list[tuple[Tensor, ...]] = []

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[key] += 1
            result = fn(*args, **kwargs)
            if key == "native":
                self.native_outputs.append(result)
            return result

        return counted


@contextmanager
def spy_paths() -> Iterator[PathSpy]:
    """Within the block, count which loop each layer-norm LSTM direction runs."""
    spy = PathSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LSTMLayerNormNative, "apply", spy.wrap("native", LSTMLayerNormNative.apply))
        mp.setattr(LSTMLayerNormLayerNative, "apply", spy.wrap("native", LSTMLayerNormLayerNative.apply))
        # with gradients off the module calls the op directly (the first 3 results: out, h_n, c_n)
        mp.setattr(lstm_module, "run_inference", spy.wrap("native", lstm_module.run_inference))
        mp.setattr(LSTMLayerNormFunction, "apply", spy.wrap("fused", LSTMLayerNormFunction.apply))
        mp.setattr(LSTM, "_layer_norm_sequence", staticmethod(spy.wrap("loop", LSTM._layer_norm_sequence)))
        yield spy


@contextmanager
def native_switch(enabled: bool) -> Iterator[None]:
    """Run the block with the C++ loop allowed (``enabled``) or disabled through the environment variable."""
    with pytest.MonkeyPatch.context() as mp:
        if enabled:
            mp.delenv(ENV, raising=False)
        else:
            mp.setenv(ENV, "0")
        yield


def perturb(module: LSTM, seed: int) -> LSTM:
    """Random parameters, layer-norm gains around 1 (but away from it) and cell biases away from 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.rand(p.shape, generator=gen, dtype=torch.float64).mul(1.4).sub(0.7).to(p.dtype)
            if name.startswith("layer_norm") and name.endswith("weight"):
                p.copy_(noise + 1.0)
            else:
                p.copy_(noise)
    return module


def build(
    *,
    input_size: int = 3,
    hidden_size: int = 4,
    num_layers: int = 1,
    proj_size: int = 0,
    bias: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    residual: bool = False,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    layer_norm: bool | str = True,
) -> LSTM:
    module = LSTM(
        input_size,
        hidden_size,
        num_layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        proj_size=proj_size,
        layer_norm=layer_norm,  # type: ignore[arg-type]
        residual=residual,
        dtype=dtype,
    )
    return perturb(module, seed).eval()


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def weighted_loss(tensors: list[Tensor]) -> Tensor:
    """Weights every position of every tensor differently, so that misplaced gradients show."""
    total = tensors[0].new_zeros(())
    for k, t in enumerate(tensors):
        weights = torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype).view_as(t)
        total = total + (t * weights).sum() * (1.0 + 0.1 * k)
    return total


def assert_all_close(actual: list[Tensor], expected: list[Tensor], atol: float, rtol: float = 0.0) -> None:
    assert len(actual) == len(expected)
    for k, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, k=k: f"tensor {k}: {m}")


# ---- arguments of the autograd binding -----------------------------------------------------------------------

NATIVE_ARGS = (
    "xp",
    "gain_ih",
    "shift",
    "h0",
    "c0",
    "weight_hh",
    "gain_hh",
    "cell_weight",
    "cell_bias",
    "weight_hr",
)


def native_args(
    *,
    steps: int = 3,
    batch: int = 2,
    hidden: int = 3,
    proj: int = 0,
    shift: bool = True,
    cell_bias: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    variant: str = "separate",
) -> dict[str, Tensor | None]:
    """Arguments of :meth:`LSTMLayerNormNative.apply` before ``eps``, ``reverse`` and the variant (``weight_hr`` if
    ``proj``; ``gain_ih`` with the ``"separate"`` variant only)."""
    gen = torch.Generator().manual_seed(seed)
    out = proj or hidden

    def rand(*shape: int, scale: float, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset).to(dtype)

    return {
        "xp": rand(steps, batch, 4, hidden, scale=1.5, offset=0.3),
        "gain_ih": rand(4, hidden, scale=0.4, offset=1.0) if variant == "separate" else None,
        "shift": rand(4, hidden, scale=0.5) if shift else None,
        "h0": rand(batch, out, scale=0.5),
        "c0": rand(batch, hidden, scale=0.8),
        "weight_hh": rand(4 * hidden, out, scale=0.7),
        "gain_hh": rand(4, hidden, scale=0.4, offset=1.0),
        "cell_weight": rand(hidden, scale=0.4, offset=1.0),
        "cell_bias": rand(hidden, scale=0.5) if cell_bias else None,
        "weight_hr": rand(out, hidden, scale=0.7) if proj else None,
    }


def apply_native(
    args: dict[str, Tensor | None], reverse: bool, variant: str
) -> tuple[Tensor, Tensor, Tensor]:
    return LSTMLayerNormNative.apply(*(args[name] for name in NATIVE_ARGS), EPS, reverse, variant)


def non_contiguous(t: Tensor) -> Tensor:
    """The values of ``t`` in a non-contiguous layout (differentiable with respect to ``t``)."""
    if t.dim() == 1:
        return torch.stack([t, t], 1)[:, 0]  # stride 2
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _values_and_grads(
    args: dict[str, Tensor | None], layout: Callable[[str, Tensor], Tensor], reverse: bool, variant: str
) -> list[Tensor]:
    leaves = {n: t.detach().requires_grad_() for n, t in args.items() if t is not None}
    laid_out = {n: layout(n, leaves[n]) if n in leaves else None for n in NATIVE_ARGS}
    result = apply_native(laid_out, reverse, variant)
    return list(result) + list(torch.autograd.grad(weighted_loss(list(result)), list(leaves.values())))
