"""Adaptive gradient clipping (AGC): clip each unit's gradient relative to the norm of its weights.

Brock, De, Smith, Simonyan (2021), "High-Performance Large-Scale Image Recognition Without
Normalization", ICML (NFNets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

import torch
from torch import Tensor

from rnn_stability.functional.clipping._checks import check_positive
from rnn_stability.functional.clipping.host_scalars import uses_host_scalars

__all__ = ["adaptive_grad_clip_", "matches_any", "unitwise_norm"]

_GRAD_NORM_FLOOR = 1e-6
"""Floor on a unit's gradient norm before dividing by it, as in timm's `adaptive_clip_grad`."""


def unitwise_norm(tensor: Tensor) -> Tensor:
    """Euclidean norm of each unit: of each row (dim 0 slice) for tensors with `ndim > 1`, else the whole.

    For `nn.Linear`/RNN weights of shape `(out, in)` a unit is an output neuron (one gate row of an
    LSTM weight); for convolutions `(out, in, *kernel)` it is an output channel. The result keeps the
    reduced dimensions so it broadcasts against `tensor`.

    Norms are float32, or float64 for a float64 tensor (its norms may lie beyond float32's range).

    Examples:
        >>> import torch
        >>> unitwise_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([[5.],
                [1.]])

    Raises:
        TypeError: if `tensor` is not a tensor.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"`tensor` must be a Tensor, got {type(tensor).__name__}.")
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor, dtype=wide).reshape([1] * tensor.ndim)
    return torch.linalg.vector_norm(tensor, dim=tuple(range(1, tensor.ndim)), keepdim=True, dtype=wide)


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` equals one of `patterns`, matches one as a `fnmatch` glob, or lies under one.

    `"head"` matches `"head.weight"`; `"*.bias"` matches every bias.

    Examples:
        >>> matches_any("head.weight", ["head"]), matches_any("rnn.bias_ih_l0", ["*.bias*"])
        (True, True)

    Raises:
        TypeError: if `name` is not a string, or `patterns` is a string (its characters would be the
            patterns) instead of a sequence of strings.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a parameter name (a string), got {type(name).__name__}.")
    if isinstance(patterns, str):
        raise TypeError(f"`patterns` must be a sequence of names or patterns, got the string {patterns!r}.")
    return any(name == p or name.startswith(p + ".") or fnmatchcase(name, p) for p in patterns)


def adaptive_grad_clip_(
    parameters: Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Tensor,
    clip_factor: float = 0.01,
    eps: float = 1e-3,
    exclude: Sequence[str] = (),
) -> None:
    r"""Clip gradients unit-wise so that $\|g_i\| / \max(\|w_i\|, \epsilon) \le \lambda$, in place.

    AGC from Brock et al. (2021), "High-Performance Large-Scale Image Recognition Without Normalization".
    A unit whose gradient is too large relative to its weights is rescaled to
    $\lambda \max(\|w_i\|, \epsilon) / \|g_i\|$; every other unit is left bit-identical. Stateless. On
    accelerators it never synchronises with the host; on the CPU a parameter with no unit to clip is skipped
    after one host read (see `rnn_stability.functional.uses_host_scalars`), with the same result. The paper
    does not clip the final classifier layer: pass its name in `exclude`.

    Args:
        parameters: parameters, a single tensor, or `(name, parameter)` pairs such as
            `model.named_parameters()` (needed for `exclude`).
        clip_factor: $\lambda$ (> 0); the paper uses 0.01 for batch size 4096 and larger for smaller
            batches.
        eps: $\epsilon$ (> 0), the floor on the weight norm so zero-initialised weights can move.
        exclude: names or `fnmatch` patterns of parameters to leave alone (e.g. `["head"]`); a module
            name excludes all its parameters. Needs named parameters.

    Raises:
        ValueError: if `clip_factor` or `eps` is not positive, or `exclude` is given with unnamed
            parameters.
        TypeError: if `exclude` is a string (or holds anything but strings) instead of a sequence of
            strings, or `parameters` is a mapping or yields something other than tensors or
            `(name, tensor)` pairs.

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        >>> w.grad = torch.tensor([[0.3, 0.4], [0.0, 0.001]])
        >>> adaptive_grad_clip_([w], clip_factor=0.01)
        >>> w.grad  # row 0: 0.5 / 5 > 0.01, rescaled to norm 0.05; row 1: 0.001 / 1 <= 0.01, untouched
        tensor([[0.0300, 0.0400],
                [0.0000, 0.0010]])
    """
    clip_factor = check_positive("clip_factor", clip_factor)
    eps = check_positive("eps", eps)
    if isinstance(exclude, str):
        raise TypeError(
            f"`exclude` must be a sequence of parameter names or patterns, got the string {exclude!r}."
        )
    try:
        exclude = tuple(exclude)  # read once: a generator would be empty by the second parameter
    except TypeError:
        raise TypeError(
            f"`exclude` must be a sequence of parameter names or patterns, got {exclude!r}."
        ) from None
    if not all(isinstance(pattern, str) for pattern in exclude):
        raise TypeError(f"`exclude` must hold parameter names or patterns (strings), got {exclude!r}.")
    if isinstance(parameters, Mapping):
        raise TypeError(
            "`parameters` must be tensors or (name, tensor) pairs; for a dict pass `.items()`, got "
            f"{type(parameters).__name__}."
        )
    # A clipped unit has ‖g‖ > λ·max(‖w‖, ε) >= λε; from 2e-6 on (float32 rounding aside) that is above the
    # floor on ‖g‖, which then changes no result and is skipped (one tensor operation per parameter less).
    floor_matters = clip_factor * eps < 2 * _GRAD_NORM_FLOOR
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    for item in parameters:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            name, param = item
            if exclude and matches_any(name, exclude):
                continue
        elif isinstance(item, Tensor):
            if exclude:
                raise ValueError("`exclude` needs named parameters, e.g. `model.named_parameters()`.")
            param = item
        else:
            raise TypeError(f"`parameters` must yield tensors or (name, tensor) pairs, got {item!r}.")
        grad = param.grad
        if grad is None:
            continue
        max_norm = unitwise_norm(param.detach()).clamp_(min=eps).mul_(clip_factor)
        grad_norm = unitwise_norm(grad)
        exceeds = grad_norm > max_norm
        if uses_host_scalars(grad.device) and not exceeds.any().item():
            continue  # on the CPU, a parameter with no unit to clip is left untouched (free to check there)
        divisor = grad_norm.clamp(min=_GRAD_NORM_FLOOR) if floor_matters else grad_norm
        scale = torch.where(exceeds, max_norm / divisor, 1.0)
        grad.mul_(scale if scale.dtype == grad.dtype else scale.to(grad.dtype))
