"""Gradient and weight norms computed with `torch._foreach_norm` and no host synchronisation.

Everything here returns tensors on the parameters' device; converting to Python numbers (a host sync on
GPU) is left to the caller, which should only do it on logging steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "foreach_norms",
    "grad_norms",
    "nonfinite_count",
    "total_grad_norm",
    "total_norm",
]


def _check_norm_type(norm_type: float) -> float:
    if isinstance(norm_type, bool) or not isinstance(norm_type, Real):
        raise TypeError(f"`norm_type` must be a positive number or inf, got {norm_type!r}.")
    norm_type = float(norm_type)
    if not (norm_type == float("inf") or norm_type > 0):
        raise ValueError(f"`norm_type` must be a positive number or inf, got {norm_type}.")
    return norm_type


def combining_dtype(norms: Sequence[Tensor]) -> torch.dtype:
    """float32, or float64 if any norm is float64: float64 norms above float32's range stay finite."""
    return torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32


def foreach_norms(tensors: Sequence[Tensor], norm_type: float = 2.0) -> list[Tensor]:
    """Norm of each tensor, computed in one `torch._foreach_norm` call per (device, dtype) group.

    Args:
        tensors: the tensors to measure.
        norm_type: order of the norm, a positive number or `inf`.

    Returns:
        One 0-d tensor per input tensor, in input order, in float32 or the tensor's own wider dtype.

    Examples:
        >>> import torch
        >>> [n.item() for n in foreach_norms([torch.tensor([3.0, 4.0]), torch.ones(4)])]
        [5.0, 2.0]
    """
    norm_type = _check_norm_type(norm_type)
    if isinstance(tensors, Tensor):  # iterating it would measure its rows, one norm each
        raise TypeError("`tensors` must be a sequence of tensors, got a single Tensor: pass `[tensor]`.")
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    try:
        for index, tensor in enumerate(tensors):
            groups[(tensor.device, tensor.dtype)].append(index)
    except AttributeError:
        raise TypeError(f"`tensors` must be a sequence of tensors, got {tensors!r}.") from None
    out: list[Tensor] = [torch.empty(0)] * len(tensors)
    for (_device, dtype), indices in groups.items():
        group = [tensors[i] for i in indices]
        # low-precision tensors are measured in float32 so that the squares cannot overflow
        if dtype in (torch.float16, torch.bfloat16):
            group = [t.float() for t in group]
        for i, norm in zip(indices, torch._foreach_norm(group, norm_type), strict=True):
            out[i] = norm
    return out


def total_norm(norms: Sequence[Tensor], norm_type: float = 2.0) -> Tensor:
    """Combine per-tensor norms into the norm of their concatenation (as `clip_grad_norm_` does).

    The result is float32, or float64 when any norm is float64 (as torch's `clip_grad_norm_` promotes):
    float64 gradients whose total norm exceeds float32's range keep a finite norm.

    Examples:
        >>> import torch
        >>> total_norm([torch.tensor(3.0), torch.tensor(4.0)]).item()
        5.0
    """
    norm_type = _check_norm_type(norm_type)
    if len(norms) == 0:
        return torch.tensor(0.0)
    if not all(isinstance(n, Tensor) for n in norms):
        raise TypeError(f"`norms` must be a sequence of 0-d tensors, got {norms!r}.")
    device = norms[0].device
    dtype = combining_dtype(norms)
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in norms])
    if norm_type == float("inf"):
        return stacked.max()
    return torch.linalg.vector_norm(stacked, norm_type)


def _grads(parameters: Iterable[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    try:  # no per-item type check: this runs every step; a non-tensor item has no `.grad`
        return [p.grad for p in parameters if p.grad is not None]
    except AttributeError:
        raise TypeError(f"`parameters` must be tensors (or one tensor), got {parameters!r}.") from None


def grad_norms(parameters: Iterable[Tensor] | Tensor, norm_type: float = 2.0) -> list[Tensor]:
    """Norm of the gradient of each parameter that has one (parameters without `.grad` are skipped).

    Examples:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.tensor([6.0, 8.0])
        >>> grad_norms([w])[0].item()
        10.0
    """
    return foreach_norms(_grads(parameters), norm_type)


def total_grad_norm(parameters: Iterable[Tensor] | Tensor, norm_type: float = 2.0) -> Tensor:
    """Total norm of all gradients, as `torch.nn.utils.clip_grad_norm_` computes it, without clipping.

    Examples:
        >>> import torch
        >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        >>> a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
        >>> total_grad_norm([a, b]).item()
        5.0
    """
    grads = _grads(parameters)
    if grads and type(norm_type) is float and norm_type > 0:
        # The common case in one foreach call and two small ops, touching as little else as it can: on a
        # large model this runs just after the norms have streamed every gradient through the caches, so
        # each extra Python step costs cache misses. Exactly the ops of the general path below, which then
        # groups nothing and converts nothing, so the result is bit-identical.
        dtype, device = grads[0].dtype, grads[0].device
        if (dtype is torch.float32 or dtype is torch.float64) and all(
            g.dtype is dtype and g.device == device for g in grads
        ):
            stacked = torch.stack(torch._foreach_norm(grads, norm_type))
            return stacked.max() if norm_type == math.inf else torch.linalg.vector_norm(stacked, norm_type)
    return total_norm(foreach_norms(grads, norm_type), norm_type)


def nonfinite_count(parameters: Iterable[Tensor] | Tensor) -> Tensor:
    """Number of NaN or Inf elements over all gradients, as a 0-d int64 tensor (no host sync).

    Examples:
        >>> import torch
        >>> w = torch.zeros(3, requires_grad=True)
        >>> w.grad = torch.tensor([1.0, float("nan"), float("inf")])
        >>> nonfinite_count([w]).item()
        2
    """
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0, dtype=torch.int64)
    device = grads[0].device
    counts = [(~torch.isfinite(g)).sum().to(device) for g in grads]
    return torch.stack(counts).sum()
