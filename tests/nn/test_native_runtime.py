"""The C++ LSTM kernel at run time: its buffer pool (reuse once free, never while referenced, release on
demand) and its rows split over threads."""

from __future__ import annotations

import pytest
import torch

from rnn_stability.nn import LSTM, native
from tests.helpers import native_kernel_or_skip


@pytest.fixture(scope="module", autouse=True)
def kernel() -> None:
    native_kernel_or_skip()


def _grads(module: LSTM) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]  # type: ignore[union-attr]


def test_buffers_are_reused_once_the_graph_is_freed() -> None:
    torch.manual_seed(0)
    module = LSTM(5, 7, 2, layer_norm=True)
    x = torch.randn(9, 3, 5)
    native.empty_cache()
    for _ in range(2):
        out, _ = module(x)
        out.sum().backward()
    held = native.workspace_bytes()
    assert held > 0
    for _ in range(3):
        out, _ = module(x)
        out.sum().backward()
    assert native.workspace_bytes() == held
    native.empty_cache()
    assert native.workspace_bytes() == 0


def test_graphs_alive_at_once_get_their_own_buffers() -> None:
    """Two forwards before one backward: the second must not overwrite what the first saved."""
    torch.manual_seed(0)
    module = LSTM(5, 7, 2, layer_norm=True, bidirectional=True)
    x = torch.randn(6, 3, 5)
    out_a, _ = module(x)
    out_b, _ = module(2 * x)
    (out_a.sum() + out_b.pow(2).sum()).backward()
    together = _grads(module)
    module.zero_grad()
    out_a, _ = module(x)
    out_a.sum().backward()
    out_b, _ = module(2 * x)
    out_b.pow(2).sum().backward()
    for a, b in zip(together, _grads(module), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_outputs_kept_by_the_caller_are_not_overwritten() -> None:
    torch.manual_seed(0)
    module = LSTM(5, 7, layer_norm=True)
    x = torch.randn(6, 3, 5, requires_grad=True)
    out, _ = module(x)
    out.sum().backward()
    kept, grad = out.detach().clone(), x.grad.clone()  # type: ignore[union-attr]
    first, _ = module(x)
    for _ in range(3):
        again, _ = module(torch.randn(6, 3, 5, requires_grad=True))
        again.sum().backward()
    assert torch.equal(first.detach(), kept)
    x.grad = None
    first.sum().backward()
    assert torch.equal(x.grad, grad)


def _grad_step(module: LSTM, x: torch.Tensor) -> list[torch.Tensor]:
    module.zero_grad()
    out, _ = module(x)
    out.sum().backward()
    return _grads(module)


@pytest.mark.parametrize("grad_first", [False, True], ids=["no_grad_first", "grad_first"])
@pytest.mark.parametrize("no_grad", [torch.inference_mode, torch.no_grad], ids=["inference_mode", "no_grad"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_buffers_from_inference_mode_are_not_saved_for_backward(
    no_grad: type, train: bool, grad_first: bool
) -> None:
    """A forward under inference_mode makes inference tensors; the pool must not hand them to a forward that
    autograd records (which failed with "Inference tensors cannot be saved for backward"), nor must an
    inference forward leave the pool unusable. Both orders, the no-grad forward in train and in eval mode."""
    torch.manual_seed(0)
    module = LSTM(3, 8, layer_norm=True)
    x = torch.randn(2, 5, 3)
    native.empty_cache()
    expected = _grad_step(module, x)
    module.eval()
    with torch.no_grad():
        reference, _ = module(x)
    native.empty_cache()
    for step in range(3):
        if grad_first or step > 0:
            for a, b in zip(expected, _grad_step(module, x), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        module.train(train)
        with no_grad():
            out, _ = module(x)
        module.train()
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
    native.empty_cache()


def test_rows_split_over_threads_match_the_pytorch_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough batch rows (70) and width (64) that the kernel splits each step's rows over two threads."""
    torch.manual_seed(0)
    module = LSTM(6, 64, layer_norm=True, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 70, 6, dtype=torch.float64, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for enabled in ("1", "0"):
            monkeypatch.setenv("RNN_STABILITY_NATIVE", enabled)
            out, (h, c) = module(x)
            grads = torch.autograd.grad(
                (out * out.detach().sin()).sum() + h.sum() + c.sum(), [x, *module.parameters()]
            )
            results.append((out, h, c, *grads))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
