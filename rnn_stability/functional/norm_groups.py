"""Norms of groups of tensors (whole model, per module, per parameter) and the update-to-weight ratio.

A *group* is a set of parameters whose norms are combined into one number, exactly as
`torch.nn.utils.clip_grad_norm_` combines all of them into the total norm. Grouping is a pure
function of parameter names, so it is computed once; the norms themselves are computed with
`torch._foreach_norm` and one `index_add_` and stay on the device (no host synchronisation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from rnn_stability.functional.grad_norm import _check_norm_type, combining_dtype, foreach_norms

__all__ = [
    "GRANULARITIES",
    "group_norms",
    "group_parameters",
    "update_to_weight_ratio",
]

GRANULARITIES = ("total", "module", "parameter")
"""Accepted values of `granularity` in `group_parameters`."""

ROOT_GROUP = "root"
"""Group name, at `"module"` granularity, of parameters registered directly on the root module."""

# A recurrent module's per-layer parameters: torch's `weight_ih_l0`, `bias_hh_l1_reverse`, `weight_hr_l0` (cells:
# `weight_ih`), and the weight/bias of our layer norms `layer_norm_<kind>_l0`, `layer_norm_cell_l1_reverse`
# (cells: `layer_norm_<kind>`). The group is the layer's suffix without its underscore, `l0` or `l1_reverse`.
_RECURRENT_PARAMETER = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)(?:_(l\d+(?:_reverse)?))?$")
_RECURRENT_NORM = re.compile(r"^layer_norm_[a-z]+(?:_(l\d+(?:_reverse)?))?$")


def _module_group(name: str) -> str:
    """The `"module"` group of a parameter: its owning module, or the layer (and direction) of a recurrent one."""
    parts = name.split(".")
    owner, match = parts[:-1], _RECURRENT_PARAMETER.match(parts[-1])
    if match is None and len(parts) >= 2 and parts[-1] in ("weight", "bias"):
        match = _RECURRENT_NORM.match(parts[-2])
        if match is not None:
            owner = parts[:-2]
    if match is not None and match.group(1) is not None:
        owner = [*owner, match.group(1)]
    return ".".join(owner) or ROOT_GROUP


def group_parameters(names: Sequence[str], granularity: str = "module") -> tuple[list[str], list[int]]:
    """Assign each named parameter to a group.

    Args:
        names: parameter names as given by `Module.named_parameters()` (e.g. `"rnn.weight_hh_l0"`).
        granularity: `"total"` puts every parameter in one group called `"total"`; `"module"` groups
            parameters by the module that directly owns them (the name without its last component, e.g.
            `"encoder.head"`; parameters of the root module itself form the group `"root"`), except that
            a recurrent module's parameters are grouped per layer and direction, its layer norms included:
            `"encoder.rnn.l0"`, `"encoder.rnn.l0_reverse"`, `"encoder.rnn.l1"` (torch's `_l<k>` suffixes;
            a cell's parameters form one group, the cell); `"parameter"` gives every parameter its own
            group, named like the parameter.

    Returns:
        The group names in order of first appearance, and for each input name the index of its group.

    Raises:
        ValueError: if `granularity` is not one of `"total"`, `"module"`, `"parameter"`.
        TypeError: if `names` is a string or holds anything but strings.

    Examples:
        >>> group_parameters(["rnn.weight_ih_l0", "rnn.bias_ih_l0", "head.weight", "scale"])
        (['rnn.l0', 'head', 'root'], [0, 0, 1, 2])
        >>> group_parameters(["rnn.weight_hh_l1_reverse", "rnn.layer_norm_cell_l1_reverse.bias", "rnn.weight_hh_l0"])
        (['rnn.l1_reverse', 'rnn.l0'], [0, 0, 1])
        >>> group_parameters(["cell.weight_ih", "cell.layer_norm_ih.weight", "cell.norm.weight"])
        (['cell', 'cell.norm'], [0, 0, 1])
        >>> group_parameters(["rnn.weight_ih_l0", "head.weight"], "total")
        (['total'], [0, 0])
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}.")
    # a string is a sequence of one-character names: without this check "a.b" gave three groups
    if not isinstance(names, str):
        names = list(names)  # read once: a generator would be consumed by the check below
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"`names` must be a sequence of parameter names (strings), got {names!r}.")
    group_names: list[str] = []
    positions: dict[str, int] = {}
    index: list[int] = []
    for name in names:
        if granularity == "total":
            group = "total"
        elif granularity == "parameter":
            group = name
        else:
            group = _module_group(name)
        if group not in positions:
            positions[group] = len(group_names)
            group_names.append(group)
        index.append(positions[group])
    return group_names, index


def _check_groups(groups: Sequence[int] | Tensor, num_groups: int, count: int) -> None:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 0:
        raise ValueError(f"`num_groups` must be a non-negative int, got {num_groups!r}.")
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (Sequence, Tensor)):
        raise TypeError(f"`groups` must be a sequence of ints or a tensor, got {type(groups).__name__}.")
    if len(groups) != count:
        raise ValueError(f"`groups` must have one entry per norm ({count}), got {len(groups)}.")
    if count == 0:
        return
    # The range is checked where reading it is free (Python ints, CPU tensors); an accelerator tensor is
    # trusted, since checking it would cost a host sync (an out-of-range index there is a device-side error).
    if isinstance(groups, Tensor):
        if groups.device.type != "cpu":
            return
        low, high = int(groups.min()), int(groups.max())
    else:
        if not all(isinstance(g, int) and not isinstance(g, bool) for g in groups):
            raise TypeError(f"`groups` must hold ints, got {list(groups)!r}.")
        low, high = min(groups), max(groups)
    if low < 0 or high >= num_groups:
        raise ValueError(
            f"`groups` must hold group indices in [0, num_groups={num_groups}), got values in [{low}, {high}]."
        )


def group_norms(
    norms: Sequence[Tensor], groups: Sequence[int] | Tensor, num_groups: int, norm_type: float = 2.0
) -> Tensor:
    """Combine per-tensor norms into one norm per group (the norm of the concatenated group members).

    Args:
        norms: 0-d norms, one per tensor (e.g. from `rnn_stability.functional.foreach_norms`).
        groups: for each norm, the index of its group, in `[0, num_groups)`.
        num_groups: number of groups; groups without members get norm 0.
        norm_type: order of the norms, a positive number or `inf`; must match how `norms` were computed.

    Returns:
        A float32 tensor of shape `(num_groups,)` on the device of the first norm (CPU if there are none).

    Raises:
        ValueError: if `groups` does not have one entry per norm, holds an index outside
            `[0, num_groups)` (checked for Python ints and CPU tensors; not for accelerator tensors, where
            it would cost a host sync), or `num_groups` is negative.
        TypeError: if `groups` is not a sequence of ints or a tensor.

    Examples:
        >>> import torch
        >>> group_norms([torch.tensor(3.0), torch.tensor(4.0), torch.tensor(2.0)], [0, 0, 1], 2).tolist()
        [5.0, 2.0]
        >>> group_norms([torch.tensor(3.0), torch.tensor(4.0)], [1, 1], 2, norm_type=float("inf")).tolist()
        [0.0, 4.0]
    """
    norm_type = _check_norm_type(norm_type)
    _check_groups(groups, num_groups, len(norms))
    if len(norms) == 0:
        return torch.zeros(num_groups)
    device = norms[0].device
    # float64 norms are combined in float64 (their powers overflow float32 long before they do)
    dtype = combining_dtype(norms)
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in norms])
    index = torch.as_tensor(groups, dtype=torch.int64, device=device)
    out = torch.zeros(num_groups, dtype=dtype, device=device)
    if norm_type == float("inf"):
        # norms are non-negative, so starting from 0 is the identity of max
        return out.scatter_reduce_(0, index, stacked, reduce="amax").float()
    return out.index_add_(0, index, stacked.pow(norm_type)).pow(1.0 / norm_type).float()


def update_to_weight_ratio(
    before: Sequence[Tensor],
    after: Sequence[Tensor],
    groups: Sequence[int] | Tensor,
    num_groups: int,
    norm_type: float = 2.0,
) -> Tensor:
    """Relative size of a parameter update, `‖w_after − w_before‖ / ‖w_before‖`, per group.

    A ratio far above ~1e-3 per step often means the learning rate is too high for that group, far below
    it that the group barely learns. Where a group's weights were exactly zero before the update the ratio
    is `inf` (or `nan` if the update was zero too), following IEEE division.

    Args:
        before: the parameters before the update (e.g. clones taken in an optimizer step pre-hook).
        after: the same parameters after the update, in the same order and shapes.
        groups: for each tensor, the index of its group, in `[0, num_groups)`.
        num_groups: number of groups.
        norm_type: order of the norms, a positive number or `inf`.

    Returns:
        A float32 tensor of shape `(num_groups,)`.

    Raises:
        ValueError: if `before` and `after` differ in length.

    Examples:
        >>> import torch
        >>> w0 = [torch.tensor([3.0, 4.0]), torch.tensor([1.0])]
        >>> w1 = [torch.tensor([3.0, 4.5]), torch.tensor([1.5])]
        >>> update_to_weight_ratio(w0, w1, [0, 1], 2).tolist()
        [0.10000000149011612, 0.5]
    """
    if len(before) != len(after):
        raise ValueError(
            f"`before` and `after` must have the same length, got {len(before)} and {len(after)}."
        )
    if len(before) == 0:
        return torch.zeros(num_groups)
    deltas = torch._foreach_sub(list(after), list(before))
    delta_norms = group_norms(foreach_norms(deltas, norm_type), groups, num_groups, norm_type)
    weight_norms = group_norms(foreach_norms(before, norm_type), groups, num_groups, norm_type)
    return delta_norms / weight_norms
