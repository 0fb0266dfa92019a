"""Layer normalisation applied separately to each gate block of a fused gate projection."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["GateLayerNorm", "gate_layer_norm"]


def gate_layer_norm(x: Tensor, gain: Tensor, eps: float = 1e-5, shift: Tensor | None = None) -> Tensor:
    """Normalise each of the `G` gate blocks of `x` over its `H` features and scale it by `gain`.

    `x` holds `G` gate pre-activations side by side (torch's fused layout, e.g. `(i, f, g, o)` for an
    LSTM); every block is normalised on its own, as in Ba, Kiros & Hinton (2016), "Layer Normalization".
    All blocks go through a single `F.layer_norm` call on a `(..., G, H)` view; the gain and the optional
    shift are applied in one fused `addcmul`.

    Args:
        x: gate pre-activations of shape `(..., G * H)`.
        gain: per-gate gains of shape `(G, H)`.
        eps: added to the variance for numerical stability.
        shift: optional per-gate shift of shape `(G, H)` added after the gain.

    Returns:
        The normalised blocks, shape `(..., G, H)`.

    Examples:
        >>> x = torch.tensor([[1.0, 3.0, 10.0, 30.0]])
        >>> gate_layer_norm(x, torch.ones(2, 2), eps=0.0)
        tensor([[[-1.,  1.],
                 [-1.,  1.]]])
    """
    num_gates, hidden_size = gain.shape
    blocks = x.unflatten(-1, (num_gates, hidden_size))
    normalised = F.layer_norm(blocks, (hidden_size,), eps=eps)
    if shift is None:
        return normalised * gain
    return torch.addcmul(shift, normalised, gain)


class GateLayerNorm(nn.Module):
    """Learnable per-gate-block layer normalisation (gain only) for a fused `(G * H)` gate projection.

    The shift of each block is left to the recurrent layer's own `bias_ih` / `bias_hh`, which sit right after
    the normalisation: an extra LayerNorm bias would be redundant with them (and `bias=False` layers stay
    bias-free). The gain starts at 1, so a fresh module is a plain normalisation.

    Args:
        num_gates: number of gate blocks `G` (4 for an LSTM, 3 for a GRU).
        hidden_size: width `H` of each block.
        eps: added to the variance for numerical stability.
        device: device of the gain.
        dtype: dtype of the gain.

    Raises:
        ValueError: if `num_gates` or `hidden_size` is not positive or `eps` is negative.

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
        if not isinstance(num_gates, int) or num_gates <= 0:
            raise ValueError(f"`num_gates` must be a positive int, got {num_gates!r}")
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"`hidden_size` must be a positive int, got {hidden_size!r}")
        if eps < 0:
            raise ValueError(f"`eps` must be a non-negative float, got {eps!r}")
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
