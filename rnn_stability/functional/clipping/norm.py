"""Clipping by total gradient norm and by value: host scalars on the CPU, no host synchronisation elsewhere.

The threshold may be a Python number or a 0-d tensor (as produced by the adaptive strategies). Which path runs
is decided by `rnn_stability.functional.uses_host_scalars`: on the CPU the norm is read as a number and the
gradients are rescaled only when it exceeds the threshold; on accelerators the decision is a `torch.where` on
the device and nothing calls `.item()`. Both paths give bit-identical gradients and norms.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from rnn_stability.functional.clipping._checks import check_positive
from rnn_stability.functional.clipping.host_scalars import HOST_FLOATS, host_float, uses_host_scalars
from rnn_stability.functional.grad_norm import _grads, total_grad_norm

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_"]

_EPS = 1e-6
"""Added to the norm before dividing, as `torch.nn.utils.clip_grad_norm_` does."""

_FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_threshold(name: str, value: float | Tensor) -> Tensor | float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"`{name}` must be a number or a 0-d tensor, got a tensor of shape {tuple(value.shape)}."
            )
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"`{name}` must be a real number or a real 0-d tensor, got dtype {value.dtype}.")
        # A negative threshold would flip the gradients (gradient ascent) and a NaN one disable clipping.
        # Reading a CPU tensor is free, so it is checked; an accelerator tensor (or any under
        # `force_sync_free`) is trusted, as a check would cost a host sync (the adaptive clippers' thresholds
        # are >= 0 or inf by construction). Zero is allowed (a window of zero norms gives it), unlike a number.
        if uses_host_scalars(value.device) and not float(value) >= 0:
            raise ValueError(f"`{name}` must be >= 0 (inf disables clipping), got {float(value)}.")
        return value if value.dim() == 0 else value.reshape(())  # no view op where none is needed
    return check_positive(name, value, allow_inf=True)


def _check_total_norm(total_norm: float | Tensor) -> Tensor:
    if isinstance(total_norm, Tensor) and total_norm.numel() == 1 and total_norm.is_floating_point():
        return total_norm if total_norm.dim() == 0 else total_norm.reshape(())
    if isinstance(total_norm, (int, float)) and not isinstance(total_norm, bool):
        return torch.tensor(float(total_norm))
    raise TypeError(f"`total_norm` must be a float or a 0-d floating-point tensor, got {total_norm!r}.")


def _mul_by_device_(grads: list[Tensor], factor: Tensor) -> None:
    by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
    for grad in grads:
        by_device[grad.device].append(grad)
    for device, group in by_device.items():
        torch._foreach_mul_(group, factor.to(device))


def _clip_by_host_norm_(
    grads: list[Tensor], max_norm: float | Tensor, total_norm: Tensor, kind: type[np.floating]
) -> Tensor:
    # The tensor path's arithmetic on numpy scalars of the norm's dtype, so every rounding is the same.
    if isinstance(max_norm, Tensor) and max_norm.dtype is total_norm.dtype:
        # both values are exact in `kind` as Python floats, so they compare alike without numpy (whose scalar
        # code is one more thing to load once a large model's gradients have streamed through the caches)
        norm_value, limit_value = total_norm.item(), max_norm.item()
        if not norm_value > limit_value:  # at or under the threshold, or NaN: the gradients stay as they are
            return total_norm
        norm, limit = kind(norm_value), kind(limit_value)
    else:
        norm = kind(total_norm.item())
        limit = host_float(max_norm.item() if isinstance(max_norm, Tensor) else max_norm, kind)
        if not norm > limit:
            return total_norm
    scale = float(limit / (norm + kind(_EPS)))
    for grad in grads:
        # one tensor at a time: a foreach multiply by a Python number would round it to bf16/fp16 first
        grad.mul_(scale)
    return total_norm * scale


def clip_grads_with_norm_(
    parameters: Iterable[Tensor] | Tensor, max_norm: float | Tensor, total_norm: float | Tensor
) -> Tensor:
    """Scale gradients whose already-computed total norm exceeds `max_norm` down to `max_norm`.

    The scale factor is `max_norm / (total_norm + 1e-6)` where `total_norm > max_norm` and exactly `1`
    elsewhere, so gradients at or under the threshold are left bit-identical. A NaN total norm leaves the
    gradients as they are (non-finite gradients are the business of the non-finite guard, not of clipping).
    On the CPU the comparison is made on the host and unclipped gradients are not touched at all; on
    accelerators it is a `torch.where` on the device and the gradients are multiplied by the factor (by 1
    when nothing is clipped), with no host synchronisation (see `rnn_stability.functional.uses_host_scalars`).

    Args:
        parameters: parameters (or a single tensor) whose `.grad` is scaled in place.
        max_norm: the threshold, a positive number or a 0-d tensor (>= 0; checked on the CPU only, where
            reading it costs no host sync).
        total_norm: the total norm of those gradients, e.g. from
            `rnn_stability.functional.total_grad_norm`, or a Python float (taken as a float32 CPU tensor).

    Returns:
        The total norm after clipping (`total_norm * scale`), a 0-d tensor.

    Examples:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> clip_grads_with_norm_([w], 1.0, torch.tensor(5.0))
        tensor(1.0000)
    """
    max_norm = _check_threshold("max_norm", max_norm)
    total_norm = _check_total_norm(total_norm)
    grads = _grads(parameters)
    kind = HOST_FLOATS.get(total_norm.dtype)
    if (
        kind is not None
        and uses_host_scalars(total_norm.device)
        and (not isinstance(max_norm, Tensor) or uses_host_scalars(max_norm.device))
    ):
        return _clip_by_host_norm_(grads, max_norm, total_norm, kind)
    limit = torch.as_tensor(max_norm, dtype=total_norm.dtype, device=total_norm.device)
    scale = torch.where(total_norm > limit, limit / (total_norm + _EPS), torch.ones_like(total_norm))
    if grads:
        _mul_by_device_(grads, scale)
    return total_norm * scale


def clip_grad_norm_(
    parameters: Iterable[Tensor] | Tensor, max_norm: float | Tensor, norm_type: float = 2.0
) -> tuple[Tensor, Tensor]:
    """Clip the total gradient norm to `max_norm` like `torch.nn.utils.clip_grad_norm_`, sync-free.

    Unlike torch's version it also returns the norm after clipping and never rescales gradients whose
    total norm is already under the threshold.

    Args:
        parameters: parameters (or a single tensor) whose `.grad` is clipped in place.
        max_norm: the threshold, a positive number (`inf` disables clipping) or a 0-d tensor (>= 0;
            checked on the CPU only, where reading it costs no host sync).
        norm_type: order of the norm, a positive number or `inf`.

    Returns:
        `(pre_clip_norm, post_clip_norm)`, both 0-d tensors on the gradients' device.

    Raises:
        ValueError: if `max_norm` is not positive (a CPU tensor: negative or NaN) or `norm_type` is not a
            positive number or `inf`.
        TypeError: if `max_norm` or `norm_type` is not a number (or `max_norm` a real tensor).

    Examples:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.tensor([6.0, 8.0])
        >>> pre, post = clip_grad_norm_([w], max_norm=5.0)
        >>> round(pre.item(), 4), round(post.item(), 4), [round(g, 4) for g in w.grad.tolist()]
        (10.0, 5.0, [3.0, 4.0])
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    max_norm = _check_threshold("max_norm", max_norm)
    pre = total_grad_norm(parameters, norm_type)
    return pre, clip_grads_with_norm_(parameters, max_norm, pre)


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float | Tensor) -> None:
    """Clamp every gradient element to `[-clip_value, clip_value]` in place.

    A NaN element stays NaN and an infinite one becomes `±clip_value`, as with
    `torch.nn.utils.clip_grad_value_`. On the CPU each gradient is clamped by one `clamp_` with both bounds
    (one memory pass); on accelerators the gradients are clamped by torch's grouped `foreach` kernels, one
    launch per device and dtype. A `clip_value` tensor on an accelerator stays there (no host sync): each
    gradient is then clamped with tensor bounds.

    Args:
        parameters: parameters (or a single tensor) whose `.grad` is clamped.
        clip_value: a positive number or a 0-d tensor (>= 0; checked on the CPU only, where reading it
            costs no host sync).

    Raises:
        ValueError: if `clip_value` is not positive (a CPU tensor: negative or NaN).
        TypeError: if `clip_value` is not a number or a real tensor.

    Examples:
        >>> import torch
        >>> w = torch.zeros(3, requires_grad=True)
        >>> w.grad = torch.tensor([-5.0, 0.5, 2.0])
        >>> clip_grad_value_([w], 1.0)
        >>> w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    clip_value = _check_threshold("clip_value", clip_value)
    grads = _grads(parameters)
    if isinstance(clip_value, Tensor):
        if not uses_host_scalars(clip_value.device):
            for grad in grads:
                limit = torch.as_tensor(clip_value, dtype=grad.dtype, device=grad.device)
                torch.clamp_(grad, min=-limit, max=limit)
            return
        clip_value = clip_value.item()
    bounds: dict[torch.dtype, float] = {}
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for grad in grads:
        bound = bounds.get(grad.dtype)
        if bound is None:
            bound = bounds[grad.dtype] = _in_range(clip_value, grad.dtype)
        if uses_host_scalars(grad.device):
            grad.clamp_(-bound, bound)  # the CPU's foreach is a loop of two passes; this is one
        else:
            groups[(grad.device, grad.dtype)].append(grad)
    for (_, dtype), group in groups.items():
        torch._foreach_clamp_min_(group, -bounds[dtype])
        torch._foreach_clamp_max_(group, bounds[dtype])


def _in_range(value: float, dtype: torch.dtype) -> float:
    """`value` as a tensor of `dtype` holds it (`inf` beyond its range): torch refuses such scalar bounds."""
    if dtype == torch.float32 and abs(value) <= _FLOAT32_MAX:  # the common case, without `finfo`
        return value
    if not dtype.is_floating_point or abs(value) <= torch.finfo(dtype).max:
        return value
    return torch.tensor(value, dtype=dtype).item()
