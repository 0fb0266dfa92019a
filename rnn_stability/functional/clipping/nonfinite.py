"""Helpers of the non-finite guard: agree across ranks, discard a step's gradients, name the culprits.

The guard itself (decide, count, give up after K skips in a row) is in
`rnn_stability.callbacks.AdaptiveGradientClipping`; in a plain loop::

    pre = total_grad_norm(params)
    if bool(any_across_ranks(~torch.isfinite(pre))):  # the one host sync of the step
        discard_grads_(params)  # optimizer.step() then leaves weights and state untouched
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["any_across_ranks", "discard_grads_", "nonfinite_parameter_names", "ranks_with"]


def any_across_ranks(flag: Tensor) -> Tensor:
    """Logical OR of a 0-d boolean `flag` over all ranks (`all_reduce` with `MAX`); no-op when not distributed.

    Under DDP gradients are identical on every rank after the all-reduce, so every rank already takes the
    same decision; reducing the flag as well keeps the decision collective-safe if they ever diverge.

    Examples:
        >>> import torch
        >>> any_across_ranks(torch.tensor(True))
        tensor(True)
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    as_int = flag.to(torch.int32).reshape(1)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int[0].bool()


def ranks_with(flag: Tensor) -> list[int]:
    """The ranks whose 0-d boolean `flag` is true (`all_gather`; every rank must call it); `[0]` or `[]` when
    not distributed. Meant for error messages: which rank held the non-finite gradients.

    Examples:
        >>> import torch
        >>> ranks_with(torch.tensor(True)), ranks_with(torch.tensor(False))
        ([0], [])
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [0] if bool(flag) else []
    local = flag.to(torch.int32).reshape(1)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [rank for rank, value in enumerate(torch.cat(gathered).tolist()) if value]


def discard_grads_(parameters: Iterable[Tensor]) -> None:
    """Set `.grad` of every parameter to `None`, so that `optimizer.step()` skips them.

    `torch.optim` optimizers (SGD with momentum, Adam, AdamW, RMSprop, ...) leave the parameter and its
    state (moments, step counter) untouched when `p.grad is None`.

    Examples:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.ones(2)
        >>> discard_grads_([w])
        >>> w.grad is None
        True
    """
    for param in parameters:
        param.grad = None


def nonfinite_parameter_names(named_parameters: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the parameters whose gradient holds a NaN/Inf (or whose norm overflows). Syncs once.

    Meant for error messages, on the rare path where a non-finite gradient was detected.

    Examples:
        >>> import torch
        >>> a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        >>> a.grad, b.grad = torch.ones(2), torch.tensor([1.0, float("nan")])
        >>> nonfinite_parameter_names([("a", a), ("b", b)])
        ['b']
    """
    named = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    if not named:
        return []
    flags = torch.stack([~torch.isfinite(torch.linalg.vector_norm(g.float())) for _, g in named]).cpu()
    return [name for (name, _), bad in zip(named, flags.tolist(), strict=True) if bad]
