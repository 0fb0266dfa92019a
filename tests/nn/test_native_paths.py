"""Which time loop the layer-normalised LSTM runs (:mod:`rnn_stability.nn.native`).

The C++ loop, the PyTorch fused loop or the autograd step loop by dtype, autocast and packing; the
``RNN_STABILITY_NATIVE`` environment variable; the build-failure fallback; double backward and a backward
after the C++ loop was disabled.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from rnn_stability.nn import native
from rnn_stability.nn.native import native_enabled, native_ops
from tests.nn.native_cases import (
    ATOL_LOOPS,
    ENV,
    RTOL_LOOPS,
    _native_allowed,  # noqa: F401  (fixture, used by name)
    build,
    kernel,  # noqa: F401  (fixture, used by name)
    native_switch,
    randn,
    spy_paths,
    weighted_loss,
)

pytestmark = pytest.mark.usefixtures("kernel")


# ---- 1. which loop runs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_float_runs_the_cpp_loop(dtype: torch.dtype) -> None:
    module = build(num_layers=2, bidirectional=True, proj_size=2, dtype=dtype)
    x = randn(4, 3, 3, dtype=dtype).requires_grad_()
    with spy_paths() as spy:
        out, (h, c) = module(x)
    assert spy.calls == {"native": 4, "fused": 0, "loop": 0}
    for result in spy.native_outputs:
        assert all(
            "LSTMLayerNorm" in type(t.grad_fn).__name__ and "Native" in type(t.grad_fn).__name__
            for t in result
        )
        assert all(t.dtype == dtype for t in result)
    assert out.shape == (4, 3, 4) and h.shape == (4, 3, 2) and c.shape == (4, 3, 4)


def test_packed_sequences_of_equal_lengths_run_the_cpp_loop() -> None:
    module = build(bidirectional=True)
    packed = pack_sequence([randn(5, 3, seed=k) for k in range(3)])
    with spy_paths() as spy:
        module(packed)
    assert spy.calls == {"native": 2, "fused": 0, "loop": 0}


@pytest.mark.parametrize("value", ["0", "false", "No", " off "])
def test_environment_variable_disables_the_cpp_loop(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = build(num_layers=2)
    x = randn(3, 2, 3)
    monkeypatch.setenv(ENV, value)
    assert not native_enabled() and native_ops() is None
    with spy_paths() as spy:
        module(x)
    assert spy.calls == {"native": 0, "fused": 2, "loop": 0}
    # Read at every call: allowing it again takes effect at once.
    monkeypatch.setenv(ENV, "1")
    with spy_paths() as spy:
        module(x)
    assert spy.calls == {"native": 2, "fused": 0, "loop": 0}


def test_bfloat16_runs_the_pytorch_loop() -> None:
    module = build(bidirectional=True, dtype=torch.bfloat16)
    with spy_paths() as spy:
        out, _ = module(randn(3, 2, 3, dtype=torch.bfloat16))
    assert spy.calls == {"native": 0, "fused": 2, "loop": 0}
    assert out.dtype == torch.bfloat16


def test_packed_sequences_of_unequal_lengths_run_the_autograd_loop() -> None:
    module = build(bidirectional=True)
    packed = pack_sequence([randn(n, 3, seed=n) for n in (2, 5, 3)], enforce_sorted=False)
    with spy_paths() as spy:
        module(packed)
    assert spy.calls == {"native": 0, "fused": 0, "loop": 2}


def test_cpu_autocast_runs_the_pytorch_loop() -> None:
    module = build(num_layers=2, dtype=torch.float32)
    with spy_paths() as spy, torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(randn(3, 2, 3, dtype=torch.float32))
    assert spy.calls == {"native": 0, "fused": 2, "loop": 0}
    assert out.isfinite().all()


# ---- 2. build failure ----------------------------------------------------------------------------------------


def test_failed_build_warns_once_and_falls_back_to_pytorch_loop() -> None:
    module = build(num_layers=2, bidirectional=True, proj_size=2)
    x = randn(4, 2, 3, seed=1).requires_grad_()
    with spy_paths() as spy:
        expected = module(x)[0]
    assert spy.calls["native"] == 4
    (expected_grad,) = torch.autograd.grad(weighted_loss([expected]), [x])

    builds: list[int] = []

    def broken_build() -> Any:
        builds.append(1)
        raise RuntimeError("no C++ compiler here")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_build", broken_build)
        mp.setattr(native, "_state", {})  # forget the successful build of this process
        # Disabled through the environment: no build is attempted, nothing is said.
        mp.setenv(ENV, "0")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert native_ops() is None
        assert builds == [] and native._state == {}
        mp.delenv(ENV)

        with pytest.warns(RuntimeWarning, match=ENV) as record, spy_paths() as spy:
            out = module(x)[0]
        ours = [w for w in record if issubclass(w.category, RuntimeWarning)]
        assert len(ours) == 1 and "no C++ compiler here" in str(ours[0].message)
        assert builds == [1] and native._state == {"ops": None}
        assert spy.calls == {"native": 0, "fused": 4, "loop": 0}
        torch.testing.assert_close(out, expected, atol=ATOL_LOOPS, rtol=RTOL_LOOPS)
        (grad,) = torch.autograd.grad(weighted_loss([out]), [x])
        torch.testing.assert_close(grad, expected_grad, atol=ATOL_LOOPS, rtol=RTOL_LOOPS)

        # The outcome is remembered: no second build, no second warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert native_ops() is None
            with spy_paths() as spy:
                module(x)
        assert builds == [1] and spy.calls["native"] == 0

    # The real ops are back for everything that runs after this test.
    assert native_ops() is not None
    with spy_paths() as spy:
        module(x)
    assert spy.calls["native"] == 4


# ---- 3. double backward --------------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False], ids=["cpp", "pytorch"])
def test_double_backward_raises(enabled: bool) -> None:
    module = build(num_layers=2, proj_size=2)
    x = randn(3, 2, 3).requires_grad_()
    with native_switch(enabled), spy_paths() as spy:
        out, (h, c) = module(x)
        # A loss non-linear in the outputs, so that the backward's incoming gradients require grad (with a
        # linear loss once_differentiable cannot tell that a second derivative is wanted).
        loss = weighted_loss([out.pow(2), h.pow(2), c.pow(2)])
        grads = torch.autograd.grad(loss, [x, *module.parameters()], create_graph=True)
        # ``.backward()`` runs every node of the graph, the error node of once_differentiable included (an
        # ``autograd.grad`` restricted to some inputs may prune it and silently miss the second-order terms).
        with pytest.raises(RuntimeError, match="once_differentiable"):
            sum(g.pow(2).sum() for g in grads).backward()
    assert spy.calls["native" if enabled else "fused"] == 2


# ---- robustness of the binding -------------------------------------------------------------------------------


def test_backward_after_disabling_between_forward_and_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    module = build()
    x = randn(3, 2, 3).requires_grad_()
    out, _ = module(x)
    monkeypatch.setenv(ENV, "0")
    (grad,) = torch.autograd.grad(out.sum(), [x])
    monkeypatch.delenv(ENV)
    (expected,) = torch.autograd.grad(module(x)[0].sum(), [x])
    torch.testing.assert_close(grad, expected, atol=ATOL_LOOPS, rtol=RTOL_LOOPS)
