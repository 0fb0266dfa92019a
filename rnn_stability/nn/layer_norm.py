"""Layer normalisation of gate pre-activations, per gate block, and the choice of what is normalised.

The `layer_norm` argument of our modules takes `"recurrent"`, `"joint"`, `"separate"`, `"scaled"`, `True`
(the recommended one, `DEFAULT_LAYER_NORM`) or `False`; the modules' docstrings and the guide give each
formula.
`GateLayerNorm` holds the gains of one normalised projection (or sum of projections), `gate_layer_norm`
computes it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "DEFAULT_LAYER_NORM",
    "GATE_NORMS",
    "INPUT_NORMS",
    "LAYER_NORM_VARIANTS",
    "GateLayerNorm",
    "LayerNormOption",
    "LayerNormVariant",
    "check_layer_norm",
    "checkpoint_variant_hint",
    "gate_layer_norm",
    "input_magnitude",
    "layer_norm_variant",
    "scaled_gate_layer_norm",
]

LayerNormVariant = Literal["recurrent", "joint", "separate", "scaled"]
#: What `layer_norm` may name besides `True` and `False`.
LAYER_NORM_VARIANTS: tuple[LayerNormVariant, ...] = ("recurrent", "joint", "separate", "scaled")
#: What `layer_norm=True` selects. `"scaled"` is `"separate"` (Ba et al. 2016, haste) with the normalised
#: input projection multiplied by the input's mean absolute value, so that it keeps the input's scale, which
#: `"separate"` discards (with one input feature only the sign of `x_t` is left). On the stability suite
#: (`benchmarks/results/stability`) it trains as `"separate"` does, where `"joint"` lost most of the adding
#: and digit runs; on univariate forecasting it is close to `"joint"` and torch
#: (`benchmarks/results/layer_norm_variants.md`).
DEFAULT_LAYER_NORM: LayerNormVariant = "scaled"


#: The gate normalisations of each variant, by module-attribute name (`_l{k}` suffixes in `LSTM` / `GRU`):
#: `layer_norm_hh` normalises `W_hh h`, `layer_norm_ih` normalises `W_ih x`, `layer_norm_input` normalises
#: `W_ih x` and rescales it by the input's mean absolute value (`"scaled"`), `layer_norm_gates` normalises the
#: sum `W_ih x + W_hh h`.
GATE_NORMS: dict[LayerNormVariant, tuple[str, ...]] = {
    "recurrent": ("layer_norm_hh",),
    "joint": ("layer_norm_gates",),
    "separate": ("layer_norm_ih", "layer_norm_hh"),
    "scaled": ("layer_norm_input", "layer_norm_hh"),
}
#: The gate norm of `W_ih x`, by the variants that have one.
#: Keyed by `LayerNormOption.layer_norm_variant`, so `None` (layer norm off) looks up to nothing as well.
INPUT_NORMS: dict[LayerNormVariant | None, str] = {"separate": "layer_norm_ih", "scaled": "layer_norm_input"}


def check_layer_norm(value: object) -> bool | LayerNormVariant:
    """Return `value` if it is a valid `layer_norm` argument: a bool or one of `LAYER_NORM_VARIANTS`.

    Raises:
        TypeError: if `value` is neither a bool nor a string.
        ValueError: for a string that is not one of `LAYER_NORM_VARIANTS`.

    Examples:
        >>> check_layer_norm("joint")
        'joint'
    """
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"`layer_norm` must be a bool (True or False) or one of {', '.join(LAYER_NORM_VARIANTS)}, "
            f"got {value!r}"
        )
    for choice in LAYER_NORM_VARIANTS:
        if value == choice:
            return choice
    raise ValueError(
        f"`layer_norm` must be True, False or one of {', '.join(map(repr, LAYER_NORM_VARIANTS))}, got {value!r}"
    )


def layer_norm_variant(value: bool | LayerNormVariant) -> LayerNormVariant | None:
    """What a checked `layer_norm` argument normalises: `None` for `False`, `DEFAULT_LAYER_NORM` for `True`.

    Examples:
        >>> layer_norm_variant(True), layer_norm_variant("joint"), layer_norm_variant(False)
        ('scaled', 'joint', None)
    """
    if value is False:
        return None
    return DEFAULT_LAYER_NORM if value is True else value


# The gate gains name what they normalise (`GATE_NORMS`), so a checkpoint's names tell which variant saved it.
_SAVED_BY: tuple[tuple[str, LayerNormVariant], ...] = (
    ("layer_norm_input", "scaled"),
    ("layer_norm_ih", "separate"),
    ("layer_norm_gates", "joint"),
    ("layer_norm_hh", "recurrent"),
)


def checkpoint_variant_hint(variant: LayerNormVariant | None, keys: Iterable[str], prefix: str) -> str | None:
    """What to do when a checkpoint's gate gains belong to another `layer_norm` variant than the module's.

    `keys` are the checkpoint's names, the module's own under `prefix`. Returns `None` when the gains fit
    `variant` or the checkpoint has none.

    Examples:
        >>> hint = checkpoint_variant_hint("joint", ["rnn.layer_norm_ih_l0.weight"], "rnn.")
        >>> hint.endswith("build the module with layer_norm='separate' to load them")
        True
    """
    local = [key[len(prefix) :] for key in keys if key.startswith(prefix)]
    for name, saved in _SAVED_BY:
        if any(key.startswith(name) for key in local):
            if saved == variant:
                return None
            before = " (what layer_norm=True means)" if saved == DEFAULT_LAYER_NORM else ""
            return (
                f"the checkpoint's gate layer-norm gains were saved with layer_norm={saved!r}{before}; build "
                f"the module with layer_norm={saved!r} to load them"
            )
    return None


class LayerNormOption(nn.Module):
    """What the modules with a `layer_norm` option share (`rnn_stability.nn.cells._LayerNormCellMixin` and
    `rnn_stability.nn.stacked.StackedRNNMixin`): the variant it selects, and the warning when a checkpoint's
    gate gains belong to another variant. Comes before torch's class among the bases."""

    layer_norm: bool | LayerNormVariant

    @property
    def layer_norm_variant(self) -> LayerNormVariant | None:
        """What `layer_norm` normalises: `"recurrent"`, `"joint"`, `"separate"`, `"scaled"`, or `None` when off."""
        return layer_norm_variant(self.layer_norm)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # Gate gains of another variant: say which `layer_norm` loads them. A warning, as torch does not tell this
        # method whether the load is strict (a strict one then fails on the unexpected or missing keys).
        hint = checkpoint_variant_hint(self.layer_norm_variant, state_dict.keys(), prefix)
        if hint is not None:
            where = f"{type(self).__name__} {prefix[:-1]!r}" if prefix else type(self).__name__
            warnings.warn(f"loading {where}: {hint}", UserWarning, stacklevel=4)


def _check_eps(eps: float) -> None:
    # eps <= 0 divides a constant block by zero (NaN), and a NaN eps makes every output NaN
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"`eps` must be a positive finite float, got {eps!r}")
    if not 0.0 < eps < math.inf:
        raise ValueError(f"`eps` must be a positive finite float, got {eps!r}")


def gate_layer_norm(x: Tensor, gain: Tensor, eps: float = 1e-5, shift: Tensor | None = None) -> Tensor:
    """Normalise each of the `G` gate blocks of `x` over its `H` features and scale it by `gain`.

    `x` holds `G` gate pre-activations side by side (torch's fused layout, e.g. `(i, f, g, o)` for an
    LSTM); every block is normalised on its own, as in Ba, Kiros & Hinton (2016), "Layer Normalization".
    All blocks go through a single `F.layer_norm` call on a `(..., G, H)` view; the gain and the optional
    shift are applied in one fused `addcmul`.

    Args:
        x: gate pre-activations of shape `(..., G * H)`.
        gain: per-gate gains of shape `(G, H)`.
        eps: added to the variance for numerical stability, a positive finite float.
        shift: optional per-gate shift of shape `(G, H)` added after the gain.

    Returns:
        The normalised blocks, shape `(..., G, H)`.

    Raises:
        ValueError: if `eps` is not positive and finite.
        TypeError: if `eps` is not a number.

    Examples:
        >>> x = torch.tensor([[1.0, 3.0, 10.0, 30.0]])
        >>> gate_layer_norm(x, torch.ones(2, 2), eps=1e-12)
        tensor([[[-1.,  1.],
                 [-1.,  1.]]])
    """
    _check_eps(eps)
    num_gates, hidden_size = gain.shape
    blocks = x.unflatten(-1, (num_gates, hidden_size))
    normalised = F.layer_norm(blocks, (hidden_size,), eps=eps)
    if shift is None:
        return normalised * gain
    return torch.addcmul(shift, normalised, gain)


def input_magnitude(x: Tensor) -> Tensor:
    """Mean absolute value of the features of `x` `(..., F)`, shaped `(..., 1, 1)` to scale gate blocks.

    Examples:
        >>> input_magnitude(torch.tensor([[1.0, -3.0]])).flatten()
        tensor([2.])
    """
    return x.abs().mean(-1, keepdim=True).unsqueeze(-1)


def scaled_gate_layer_norm(
    projection: Tensor, x: Tensor, gain: Tensor, eps: float = 1e-5, shift: Tensor | None = None
) -> Tensor:
    r"""The input part of the `"scaled"` variant: `gate_layer_norm(projection)` times the input's magnitude.

    $$a^x_t = \gamma_{ih} \odot LN(W_{ih} x_t) \cdot \tfrac{1}{F} \lVert x_t \rVert_1 \; (+\, shift)$$

    Each gate block of `W_ih x_t` is normalised as Ba, Kiros & Hinton (2016) do, which keeps only its
    direction, and then multiplied by the mean absolute value of the `F` input features. The result scales
    with the input as torch's `W_ih x_t` does (`a(c x) = c a(x)` for `c > 0`), so a module sees the magnitude
    of a univariate input and not only its sign, while an input of unit scale still gets a normalised
    projection of unit scale.

    Args:
        projection: `W_ih x`, shape `(..., G * H)`.
        x: the input it was computed from, shape `(..., F)`.
        gain: per-gate gains of shape `(G, H)`.
        eps: added to the variance for numerical stability, a positive finite float.
        shift: optional per-gate shift of shape `(G, H)` added last.

    Returns:
        Shape `(..., G, H)`.

    Examples:
        >>> w = torch.tensor([[1.0], [3.0]])
        >>> x = torch.tensor([[2.0], [4.0]])
        >>> scaled_gate_layer_norm(x @ w.T, x, torch.ones(1, 2), eps=1e-12)
        tensor([[[-2.,  2.]],
        <BLANKLINE>
                [[-4.,  4.]]])
    """
    normalised = gate_layer_norm(projection, gain, eps) * input_magnitude(x)
    return normalised if shift is None else normalised + shift


class GateLayerNorm(nn.Module):
    """Learnable per-gate-block layer normalisation (gain only) for a fused `(G * H)` gate projection.

    Our modules hold one per normalised quantity, named after it (`GATE_NORMS`): `layer_norm_hh` for
    `W_hh h`, `layer_norm_ih` for `W_ih x` (the `"separate"` variant), `layer_norm_input` for `W_ih x`
    rescaled by the input's magnitude (`"scaled"`), `layer_norm_gates` for their sum (`"joint"`). The shift
    of each block is left to the recurrent layer's own `bias_ih` / `bias_hh`, which sit right after the
    normalisation: an extra LayerNorm bias would be redundant with them (and `bias=False` layers stay
    bias-free). The gain starts at 1, so a fresh module is a plain normalisation.

    Args:
        num_gates: number of gate blocks `G` (4 for an LSTM, 3 for a GRU).
        hidden_size: width `H` of each block.
        eps: added to the variance for numerical stability, a positive finite float.
        device: device of the gain.
        dtype: dtype of the gain.

    Raises:
        ValueError: if `num_gates` or `hidden_size` is not positive, or `eps` is not positive and finite.
        TypeError: if `num_gates` or `hidden_size` is not an int (a bool is not a size), or `eps` is not a
            number.

    Examples:
        >>> norm = GateLayerNorm(num_gates=4, hidden_size=3)
        >>> norm(torch.randn(2, 12)).shape
        torch.Size([2, 4, 3])
    """

    def __init__(
        self,
        num_gates: int,
        hidden_size: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, size in (("num_gates", num_gates), ("hidden_size", hidden_size)):
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"`{name}` must be a positive int, got {size!r}")
            if size <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {size!r}")
        _check_eps(eps)
        self.num_gates = num_gates
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_gates, hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reset the gain to 1 (identity affine map)."""
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise `x` of shape `(..., G * H)` to gated blocks of shape `(..., G, H)`."""
        return gate_layer_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"num_gates={self.num_gates}, hidden_size={self.hidden_size}, eps={self.eps}"
