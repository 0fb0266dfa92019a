"""The regularisation options of our stacked `LSTM` / `GRU`: their state, and which loop runs with them.

`RegularizedRNNMixin` holds `weight_dropout`, `recurrent_dropout`, `input_dropout`, `zoneout` and
`batch_norm` (their formulas and masks: `rnn_stability.nn.regularization`) for
`rnn_stability.nn.stacked.StackedRNNMixin`, and decides where a layer runs: torch's kernel has no place for
recurrent dropout, zoneout or batch norm; the C++ loops take all three (batch norm as the normalised projection
they are given in place of the layer input).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnn_stability.nn.native_projection import normalised_projection
from rnn_stability.nn.regularization import REGULARIZERS, LayerMasks, check_probability, check_zoneout

__all__ = ["RegularizedRNNMixin", "check_flag"]


def check_flag(name: str, value: Any) -> bool:
    """Return `value` if it is a bool, else raise `TypeError` naming the argument."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool (True or False), got {value!r}")
    return value


class RegularizedRNNMixin(nn.RNNBase):
    """The regularisers of a stacked recurrent module; a base of `StackedRNNMixin`, before torch's class."""

    layer_norm: Any
    num_gates: int
    weight_dropout: float
    recurrent_dropout: float
    input_dropout: float
    zoneout: tuple[float, float]
    batch_norm: bool
    layer_norm_eps: float = 1e-5
    #: Where the regularisers' masks come from: `None` is torch's global generator (what
    #: `seed_everything` seeds); set a `torch.Generator` to draw them apart (see `draw_masks`).
    mask_generator: torch.Generator | None = None

    def _set_regularizers(
        self,
        weight_dropout: float,
        recurrent_dropout: float,
        input_dropout: float,
        zoneout: float | tuple[float, float],
        batch_norm: bool,
    ) -> None:
        """Check and keep the options (messages name them)."""
        self.weight_dropout = check_probability("weight_dropout", weight_dropout)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.input_dropout = check_probability("input_dropout", input_dropout)
        if self.mode != "LSTM" and isinstance(zoneout, (tuple, list)):
            raise TypeError(
                f"`zoneout` of a {self.mode} must be a float (it has no cell state), got {zoneout!r}"
            )
        self.zoneout = check_zoneout(zoneout)
        self.batch_norm = check_flag("batch_norm", batch_norm)

    def _add_batch_norms(self, suffixes: list[str], factory: dict[str, Any]) -> None:
        """`batch_norm_ih{suffix}`: the batch norm of each layer and direction's `W_ih x` (`batch_norm=True`)."""
        if self.batch_norm:
            for suffix in suffixes:
                norm = nn.BatchNorm1d(self.num_gates * self.hidden_size, eps=self.layer_norm_eps, **factory)
                setattr(self, f"batch_norm_ih{suffix}", norm)

    def _regularizer_repr(self) -> str:
        """The options that are on, as `extra_repr` shows them."""
        s = ""
        for name, off in REGULARIZERS.items():
            value = getattr(self, name)
            if value != off:
                s += f", {name}={value[0] if name == 'zoneout' and value[0] == value[1] else value!r}"
        return s

    def _regularized(self) -> bool:
        """Whether a regulariser acts in the current mode (the dropouts do nothing in `eval()`)."""
        dropouts = self.weight_dropout or self.recurrent_dropout or self.input_dropout
        zoneout = self.zoneout[0] or (self.mode == "LSTM" and self.zoneout[1])
        return bool((self.training and dropouts) or zoneout or self.batch_norm)

    def _native_loop_applies(self, masks: LayerMasks) -> bool:
        """Whether a layer may run the C++ loops of `rnn_stability.nn.native` / `native_gru` (on a CPU build).

        They run layer norm, recurrent dropout, zoneout (with or without layer norm: the variant `"none"`) and
        `batch_norm`, whose normalised `W_ih x` (statistics over every step) they take in place of the input.
        """
        return self._needs_loop(masks)

    def _native_masks(
        self, masks: LayerMasks, step_sizes: list[int], states: int
    ) -> tuple[Tensor | float | None, ...]:
        """The regularisers' arguments of the C++ loops for one direction (constant batch size): the
        recurrent-dropout mask, then per state (`h`, and `c` for the LSTM) zoneout's `(T, B, W)` keep masks
        in training, its probability in eval, or `None` when off."""
        zone: list[Tensor | float | None] = []
        for p, mask in zip(self.zoneout[:states], (masks.zone_h, masks.zone_c)[:states], strict=True):
            if p == 0.0:
                zone.append(None)
            else:
                zone.append(p if mask is None else mask.view(len(step_sizes), step_sizes[0], mask.size(-1)))
        return (masks.recurrent, *zone)

    def _needs_loop(self, masks: LayerMasks) -> bool:
        """Whether a layer runs a time loop of ours: torch's kernel has no place for these."""
        return bool(self.layer_norm or self.batch_norm or masks.recurrent is not None or any(self.zoneout))

    def _native_input(
        self, x: Tensor, step_sizes: list[int], weight_ih: Tensor, suffix: str, split_gates: bool
    ) -> tuple[Tensor, Tensor | None]:
        """What the C++ op of one direction takes as its input: `(x as (T, B, in), weight_ih)`, or with
        `batch_norm` `(BN(x W_ih^T), None)`, the normalised projection (statistics over every step, so computed
        before the loop; autograd does its backward) as `(T, B, G, H)` (`split_gates`) or `(T, B, G H)`."""
        steps = x.view(len(step_sizes), step_sizes[0], x.size(-1))
        norm = self._input_norm(suffix)
        if norm is None:
            return steps, weight_ih
        gates = (self.num_gates, self.hidden_size) if split_gates else (-1,)  # type: ignore[attr-defined]
        return normalised_projection(x, weight_ih, norm).view(*steps.shape[:2], *gates), None

    def _input_norm(self, suffix: str) -> nn.BatchNorm1d | None:
        """The batch norm of `W_ih x` of one layer and direction (`batch_norm=True`), else `None`."""
        return getattr(self, f"batch_norm_ih{suffix}") if self.batch_norm else None
