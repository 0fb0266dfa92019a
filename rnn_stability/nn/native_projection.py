"""The batch-normalised input projection of the `batch_norm` option, with its product in the C++ kernel.

Sequence-wise batch normalisation (Laurent et al. 2016, "Batch Normalized Recurrent Neural Networks")
normalises `W_ih x_t` with statistics over every valid step of every sequence, so the projection is computed
before the time loop, here, and the C++ loops take it in place of the layer input. The product `x W_ih^T` and
its gradients run through the kernel's products (csrc/projection.cpp: oneDNN for float32 where it applies;
ATen's `mm` would run MKL, 2-3x slower on AMD processors); autograd differentiates the batch norm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnn_stability.nn.native import native_lstm_supported, native_ops

__all__ = ["NativeProjection", "normalised_projection"]


class NativeProjection(torch.autograd.Function):
    """`x W^T` for `x` `(N, in)` and `W` `(out, in)` through the C++ kernel's products (first order)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ops = native_ops()
        assert ops is not None
        ctx.save_for_backward(x, weight)
        ctx.ops = ops
        return ops.projection_forward(x, weight)  # type: ignore[no-any-return]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_weight = ctx.needs_input_grad[:2]
        dx, dw = ctx.ops.projection_backward(grad, x, weight, need_x, need_weight)
        return (dx if need_x else None), (dw if need_weight else None)


def normalised_projection(x: Tensor, weight_ih: Tensor, norm: nn.Module) -> Tensor:
    """`norm(x W_ih^T)` for the rows `x` `(N, in)` of every step: `norm` is the layer's `BatchNorm1d`.

    The product runs `NativeProjection` where the C++ kernel applies (CPU, float32/float64), else `F.linear`.
    """
    if native_lstm_supported(x, weight_ih):
        return norm(NativeProjection.apply(x, weight_ih))  # type: ignore[no-any-return]
    return norm(F.linear(x, weight_ih))  # type: ignore[no-any-return]
