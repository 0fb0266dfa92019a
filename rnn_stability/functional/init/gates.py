"""Gate layout of torch's recurrent modules: which module kind, which weights, which rows belong to which gate.

torch stacks the gates of a recurrent layer along dim 0 of one fused matrix — LSTM `(i, f, g, o)`, GRU
`(r, z, n)` — so `weight_hh` is `(num_gates * H, H)` (`(4H, proj_size)` for a projected LSTM). Every
initialiser in this package works on the `H`-row *gate blocks* of these matrices, never on the fused matrix.
The functions here find the standard parameters of any `torch.nn.RNNBase` / `RNNCellBase` module (including
the subclasses of `rnn_stability.nn`) and touch nothing else, so layer-norm gains stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "GATE_NAMES",
    "LayerWeights",
    "check_gain",
    "check_generator",
    "gate_block",
    "gate_blocks",
    "layer_weights",
    "recurrent_kind",
    "recurrent_modules",
    "require_biases",
    "require_kind",
    "sample_gate_blocks_",
    "sample_into_",
]

GATE_NAMES: dict[str, tuple[str, ...]] = {
    "LSTM": ("input", "forget", "cell", "output"),
    "GRU": ("reset", "update", "new"),
    "RNN_TANH": ("hidden",),
    "RNN_RELU": ("hidden",),
}
"""Gate order along dim 0 of the fused weights and biases, per module kind (`RNNBase.mode` spelling)."""

_KIND_LABELS = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN (tanh)", "RNN_RELU": "RNN (relu)"}


@dataclass(frozen=True)
class LayerWeights:
    """The standard parameters of one layer and direction (or of a cell).

    Attributes:
        suffix: parameter-name suffix, e.g. `"_l0"`, `"_l1_reverse"`; `""` for a cell.
        weight_ih: input-to-hidden weights, `(num_gates * H, in)`.
        weight_hh: hidden-to-hidden weights, `(num_gates * H, H)` or `(4H, proj_size)`.
        bias_ih: input bias or `None` when the module has `bias=False`.
        bias_hh: hidden bias or `None`.
        weight_hr: LSTM projection `(proj_size, H)` or `None`.
    """

    suffix: str
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    weight_hr: Tensor | None


def recurrent_kind(module: nn.Module) -> str:
    """Kind of a recurrent module: `"LSTM"`, `"GRU"`, `"RNN_TANH"` or `"RNN_RELU"`.

    Layers are recognised by `RNNBase.mode`; cells by `isinstance` against torch's cell classes, or, for other
    `RNNCellBase` subclasses, by the number of gate blocks in `weight_ih`.

    Args:
        module: a `torch.nn.RNNBase` or `torch.nn.RNNCellBase` instance.

    Raises:
        TypeError: if `module` is not a recurrent module of a known kind.

    Examples:
        >>> recurrent_kind(torch.nn.GRU(3, 4)), recurrent_kind(torch.nn.RNNCell(3, 4, nonlinearity="relu"))
        ('GRU', 'RNN_RELU')
    """
    if isinstance(module, nn.RNNBase) and module.mode in GATE_NAMES:
        return module.mode
    if isinstance(module, nn.LSTMCell):
        return "LSTM"
    if isinstance(module, nn.GRUCell):
        return "GRU"
    if isinstance(module, nn.RNNCellBase):
        chunks = module.weight_ih.shape[0] // module.hidden_size
        if chunks in (3, 4):
            return "GRU" if chunks == 3 else "LSTM"
        if chunks == 1:
            return "RNN_RELU" if getattr(module, "nonlinearity", "tanh") == "relu" else "RNN_TANH"
    raise TypeError(
        "`module` must be a recurrent module (torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell or an "
        f"rnn_stability.nn module), got {type(module).__name__}"
    )


def require_kind(module: nn.Module, function: str, allowed: Iterable[str]) -> str:
    """Return the kind of `module`, raising `TypeError` naming `function` if it is not in `allowed`."""
    kind = recurrent_kind(module)
    allowed = tuple(allowed)
    if kind not in allowed:
        names = ", ".join(_KIND_LABELS[k] for k in allowed)
        raise TypeError(
            f"`{function}` supports {names} modules, got {type(module).__name__} ({_KIND_LABELS[kind]})"
        )
    return kind


def layer_weights(module: nn.Module) -> list[LayerWeights]:
    """The standard parameters of every layer and direction of `module` (one entry for a cell).

    Args:
        module: a recurrent layer or cell.

    Raises:
        TypeError: if `module` is not a recurrent module.

    Examples:
        >>> [w.suffix for w in layer_weights(torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True))]
        ['_l0', '_l0_reverse', '_l1', '_l1_reverse']
    """
    recurrent_kind(module)
    suffixes = [""]  # a cell
    if isinstance(module, nn.RNNBase):
        directions = ["", "_reverse"] if module.bidirectional else [""]
        suffixes = [f"_l{layer}{direction}" for layer in range(module.num_layers) for direction in directions]

    def get(name: str) -> Tensor | None:
        value = getattr(module, name, None)
        return value if isinstance(value, Tensor) else None

    result = []
    for suffix in suffixes:
        weight_ih, weight_hh = get(f"weight_ih{suffix}"), get(f"weight_hh{suffix}")
        if weight_ih is None or weight_hh is None:
            raise TypeError(
                f"`module` {type(module).__name__} has no `weight_ih{suffix}` / `weight_hh{suffix}`"
            )
        result.append(
            LayerWeights(
                suffix=suffix,
                weight_ih=weight_ih,
                weight_hh=weight_hh,
                bias_ih=get(f"bias_ih{suffix}"),
                bias_hh=get(f"bias_hh{suffix}"),
                weight_hr=get(f"weight_hr{suffix}"),
            )
        )
    return result


def require_biases(module: nn.Module, weights: LayerWeights, function: str) -> tuple[Tensor, Tensor]:
    """`(bias_ih, bias_hh)` of one layer, raising `ValueError` naming `function` if the module has none."""
    if weights.bias_ih is None or weights.bias_hh is None:
        raise ValueError(
            f"`{function}` needs a module built with bias=True, got {type(module).__name__} with bias=False"
        )
    return weights.bias_ih, weights.bias_hh


def _check_kind(kind: str) -> tuple[str, ...]:
    gates = GATE_NAMES.get(kind) if isinstance(kind, str) else None
    if gates is None:
        raise ValueError(f"`kind` must be one of {', '.join(map(repr, GATE_NAMES))}, got {kind!r}")
    return gates


def gate_blocks(tensor: Tensor, kind: str) -> tuple[Tensor, ...]:
    """Views of the per-gate row blocks of a fused weight or bias; writing to a view writes the parameter.

    Raises:
        ValueError: if `kind` is not a key of `GATE_NAMES`.
    """
    return tensor.chunk(len(_check_kind(kind)), dim=0)


def gate_block(tensor: Tensor, kind: str, gate: str) -> Tensor:
    """View of the rows of one gate (e.g. `"forget"` of an LSTM, `"update"` of a GRU).

    Raises:
        ValueError: if `kind` is not a key of `GATE_NAMES` or `gate` is not one of its gates.
    """
    gates = _check_kind(kind)
    if gate not in gates:
        raise ValueError(f"`gate` must be one of {', '.join(map(repr, gates))} for {kind}, got {gate!r}")
    return gate_blocks(tensor, kind)[gates.index(gate)]


def recurrent_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost recurrent submodules of `root` (including `root` itself), as `(name, module)`.

    Cells used inside a recurrent layer are not listed separately: their parameters belong to the layer.

    Examples:
        >>> net = torch.nn.ModuleDict({"enc": torch.nn.LSTM(2, 3), "head": torch.nn.Linear(3, 1)})
        >>> [name for name, _ in recurrent_modules(net)]
        ['enc']

    Raises:
        TypeError: if `root` is not a `torch.nn.Module`.
    """
    if not isinstance(root, nn.Module):
        raise TypeError(f"`root` must be a torch.nn.Module, got {type(root).__name__}")
    found: list[tuple[str, nn.Module]] = []
    for name, module in root.named_modules():
        if not isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            continue
        if any(name.startswith(f"{outer}.") or outer == "" for outer, _ in found):
            continue
        found.append((name, module))
    return found


def check_gain(name: str, value: Any) -> float:
    """Return `value` as a float if it is a finite positive number, else raise `ValueError` naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"`{name}` must be a finite positive float, got {value!r}")
    return float(value)


def check_generator(generator: Any) -> torch.Generator | None:
    """Return `generator` if it is `None` or a CPU `torch.Generator`, else raise `TypeError`."""
    if generator is not None and (
        not isinstance(generator, torch.Generator) or generator.device.type != "cpu"
    ):
        raise TypeError(f"`generator` must be None or a CPU torch.Generator, got {generator!r}")
    return generator


def sample_into_(
    target: Tensor, sampler: Callable[..., Any], generator: torch.Generator | None, **kwargs: Any
) -> None:
    """Fill `target` in place with `sampler(staging, generator=generator, **kwargs)` drawn on the CPU.

    Drawing into a float64 CPU staging tensor makes the values depend on the generator only, not on the device or
    dtype of the parameter, and lets a CPU `generator` seed CUDA weights.
    """
    staging = torch.empty(target.shape, dtype=torch.float64)
    sampler(staging, generator=generator, **kwargs)
    with torch.no_grad():
        target.copy_(staging)


def sample_gate_blocks_(
    module: nn.Module,
    sampler: Callable[..., Any],
    gain: Any,
    generator: torch.Generator | None,
    *,
    parts: Sequence[str],
) -> nn.Module:
    """Fill every gate block of the weights named in `parts` with `sampler(block, gain=gain)`, in place.

    `parts` is an ordered selection of `"weight_ih"` and `"weight_hh"` (the order fixes the order of the
    random draws); the LSTM projection `weight_hr` is filled along with `"weight_hh"`. Every layer and
    direction is handled.
    """
    kind = recurrent_kind(module)
    gain = check_gain("gain", gain)
    check_generator(generator)
    with torch.no_grad():
        for weights in layer_weights(module):
            targets: list[Tensor] = []
            for part in parts:
                targets += gate_blocks(getattr(weights, part), kind)
            if "weight_hh" in parts and weights.weight_hr is not None:
                targets.append(weights.weight_hr)
            for block in targets:
                sample_into_(block, sampler, generator, gain=gain)
    return module
