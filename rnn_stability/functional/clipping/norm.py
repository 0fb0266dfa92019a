"""Clipping by total gradient norm and by value, without host synchronisation.

The threshold may be a Python number or a 0-d tensor (as produced by the adaptive strategies); the
decision to clip is taken on the device with `torch.where`, so nothing here calls `.item()`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

from rnn_stability.functional.clipping._checks import check_positive
from rnn_stability.functional.grad_norm import _grads, total_grad_norm

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_"]

_EPS = 1e-6
"""Added to the norm before dividing, as `torch.nn.utils.clip_grad_norm_` does."""


def _check_threshold(name: str, value: float | Tensor) -> Tensor | float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"`{name}` must be a number or a 0-d tensor, got a tensor of shape {tuple(value.shape)}."
            )
        return value.reshape(())
    return check_positive(name, value, allow_inf=True)


def _mul_by_device_(grads: list[Tensor], factor: Tensor) -> None:
    by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
    for grad in grads:
        by_device[grad.device].append(grad)
    for device, group in by_device.items():
        torch._foreach_mul_(group, factor.to(device))


def clip_grads_with_norm_(
    parameters: Iterable[Tensor] | Tensor, max_norm: float | Tensor, total_norm: Tensor
) -> Tensor:
    """Scale gradients whose already-computed total norm exceeds `max_norm` down to `max_norm`.

    The scale factor is `max_norm / (total_norm + 1e-6)` where `total_norm > max_norm` and exactly `1`
    elsewhere, so gradients at or under the threshold are left bit-identical. A NaN total norm leaves the
    gradients as they are (non-finite gradients are the business of the non-finite guard, not of clipping).

    Args:
        parameters: parameters (or a single tensor) whose `.grad` is scaled in place.
        max_norm: the threshold, a positive number or a 0-d tensor.
        total_norm: the total norm of those gradients, e.g. from
            `rnn_stability.functional.total_grad_norm`.

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
    limit = torch.as_tensor(max_norm, dtype=total_norm.dtype, device=total_norm.device)
    scale = torch.where(total_norm > limit, limit / (total_norm + _EPS), torch.ones_like(total_norm))
    grads = _grads(parameters)
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
        max_norm: the threshold, a positive number (`inf` disables clipping) or a 0-d tensor.
        norm_type: order of the norm, a positive number or `inf`.

    Returns:
        `(pre_clip_norm, post_clip_norm)`, both 0-d tensors on the gradients' device.

    Raises:
        ValueError: if `max_norm` is not positive or `norm_type` is not a positive number or `inf`.

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

    Args:
        parameters: parameters (or a single tensor) whose `.grad` is clamped.
        clip_value: a positive number or a 0-d tensor.

    Raises:
        ValueError: if `clip_value` is not positive.

    Examples:
        >>> import torch
        >>> w = torch.zeros(3, requires_grad=True)
        >>> w.grad = torch.tensor([-5.0, 0.5, 2.0])
        >>> clip_grad_value_([w], 1.0)
        >>> w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    clip_value = _check_threshold("clip_value", clip_value)
    for grad in _grads(parameters):
        limit = torch.as_tensor(clip_value, dtype=grad.dtype, device=grad.device)
        torch.clamp_(grad, min=-limit, max=limit)
