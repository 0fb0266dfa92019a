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

    Raises:
        TypeError: if `flag` is not a boolean tensor.
        ValueError: if `flag` is not 0-d (one flag per rank; reduce a tensor of flags with `.any()` first).
    """
    if not isinstance(flag, Tensor) or flag.dtype != torch.bool:
        raise TypeError(f"`flag` must be a 0-d boolean tensor, got {flag!r}.")
    if flag.dim() != 0:
        raise ValueError(f"`flag` must be a 0-d boolean tensor, got shape {tuple(flag.shape)}.")
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


def discard_grads_(parameters: Iterable[Tensor] | Tensor) -> None:
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

    Raises:
        TypeError: if `parameters` holds something other than tensors.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    if not all(isinstance(param, Tensor) for param in parameters):
        raise TypeError(f"`parameters` must be tensors (or one tensor), got {parameters!r}.")
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

    Raises:
        TypeError: if an item of `named_parameters` is not a `(name, tensor)` pair (e.g. plain parameters
            instead of `model.named_parameters()`).
    """
    named = []
    for item in named_parameters:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor)):
            raise TypeError(
                "`named_parameters` must yield (name, parameter) pairs, e.g. `model.named_parameters()`, "
                f"got {type(item).__name__}."
            )
        if item[1].grad is not None:
            named.append((str(item[0]), item[1].grad))
    if not named:
        return []
    # float64 gradients are measured in float64, so a norm beyond float32's range is not called non-finite
    flags = torch.stack(
        [
            ~torch.isfinite(torch.linalg.vector_norm(g if g.dtype == torch.float64 else g.float()))
            for _, g in named
        ]
    ).cpu()
    return [name for (name, _), bad in zip(named, flags.tolist(), strict=True) if bad]
