"""Drop-in `torch.nn.LSTMCell` / `GRUCell` with an optional layer-normalised step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnn_stability.nn.layer_norm import (
    GATE_NORMS,
    INPUT_NORMS,
    GateLayerNorm,
    LayerNormOption,
    LayerNormVariant,
    check_layer_norm,
)
from rnn_stability.nn.recurrence import (
    gru_input_gates,
    gru_layer_norm_step,
    lstm_gate_shift,
    lstm_input_gates,
    lstm_layer_norm_step,
)
from rnn_stability.nn.regularization import check_zoneout, keep_mask, zoneout_blend
from rnn_stability.nn.scripting import torch_module_for_scripting

__all__ = ["GRUCell", "LSTMCell"]


class _LayerNormCellMixin(LayerNormOption, nn.RNNCellBase):
    """Layer-norm parameters and input checks shared by both cells; listed before the torch cell class.

    Builds the gate normalisations of the variant (`GATE_NORMS`: `layer_norm_hh`, `layer_norm_gates`, or
    `layer_norm_ih` / `layer_norm_input` and `layer_norm_hh`, `num_gates` blocks each), and `layer_norm_cell`
    for the LSTM.
    """

    num_gates: int
    layer_norm: bool | LayerNormVariant
    zoneout: tuple[float, float]
    layer_norm_eps: float = 1e-5
    #: Where zoneout's masks come from: `None` is torch's global generator.
    mask_generator: torch.Generator | None = None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool | LayerNormVariant = False,
        zoneout: float | tuple[float, float] = 0.0,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)  # type: ignore[call-arg]
        self.layer_norm = check_layer_norm(layer_norm)
        if not isinstance(self, nn.LSTMCell) and isinstance(zoneout, (tuple, list)):
            raise TypeError(f"`zoneout` of a GRUCell must be a float (it has no cell state), got {zoneout!r}")
        self.zoneout = check_zoneout(zoneout)
        variant = self.layer_norm_variant
        if variant is not None:
            factory: dict[str, Any] = {"device": self.weight_ih.device, "dtype": self.weight_ih.dtype}
            for name in GATE_NORMS[variant]:
                setattr(self, name, GateLayerNorm(self.num_gates, hidden_size, **factory))
            if isinstance(self, nn.LSTMCell):
                self.layer_norm_cell = nn.LayerNorm(hidden_size, bias=bias, **factory)

    def _gains(self) -> tuple[Tensor | None, Tensor]:
        """`(gain_ih, gain)`: as `rnn_stability.nn.stacked.StackedRNNMixin._gate_parameters`."""
        norm: GateLayerNorm = getattr(
            self, "layer_norm_gates" if self.layer_norm_variant == "joint" else "layer_norm_hh"
        )
        variant = self.layer_norm_variant
        name = INPUT_NORMS.get(variant)
        norm_ih: GateLayerNorm | None = None if name is None else getattr(self, name, None)
        return None if norm_ih is None else norm_ih.weight, norm.weight

    def reset_parameters(self) -> None:
        """torch's uniform init for the weights; layer-norm gains 1 and biases 0."""
        super().reset_parameters()
        for module in self.children():
            if isinstance(module, (GateLayerNorm, nn.LayerNorm)):
                module.reset_parameters()

    def extra_repr(self) -> str:
        s = super().extra_repr() + (f", layer_norm={self.layer_norm!r}" if self.layer_norm else "")
        if any(self.zoneout):
            p_h, p_c = self.zoneout
            s += f", zoneout={p_h if p_h == p_c else self.zoneout!r}"
        return s

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("layer_norm", False)
        self.__dict__.setdefault("zoneout", (0.0, 0.0))

    def __prepare_scriptable__(self) -> nn.Module:
        """For `torch.jit.script`: torch's cell with the same state (see `rnn_stability.nn.scripting`)."""
        return torch_module_for_scripting(self, ("layer_norm", "zoneout"))

    def _zoneout(self, new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Zoneout (Krueger et al. 2017) of each state: a fresh 0/1 keep mask per call, `p` in eval."""
        out = []
        for p, n, o in zip(self.zoneout, new, old, strict=False):
            keep = keep_mask(n.shape, p, n, self.mask_generator) if self.training and p > 0 else p
            out.append(zoneout_blend(n, o, keep))
        return tuple(out)

    def _check_step(self, input: Tensor, hidden: list[Tensor]) -> None:
        """The checks torch's fused cell kernels make, for the layer-norm path."""
        if input.dtype != self.weight_ih.dtype:
            raise RuntimeError(
                f"input dtype ({input.dtype}) does not match weight dtype ({self.weight_ih.dtype}) of "
                f"{type(self).__name__}"
            )
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        for idx, h in enumerate(hidden):
            if h.size(0) != input.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden{idx} batch size {h.size(0)}"
                )
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{idx} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}"
                )


class LSTMCell(_LayerNormCellMixin, nn.LSTMCell):
    r"""`torch.nn.LSTMCell` plus keyword-only `layer_norm` and `zoneout` options.

    With `layer_norm=False` the forward is torch's (native fused cell). Otherwise it is one step of the
    layer-normalised LSTM of `rnn_stability.nn.LSTM` (after Ba, Kiros & Hinton (2016), "Layer
    Normalization"), with the same variants: for `"joint"`

    $$
    (i, f, g, o) = \gamma \odot LN(W_{ih} x + W_{hh} h) + b_{ih} + b_{hh}, \quad
    c' = \sigma(f) c + \sigma(i) \tanh(g), \quad h' = \sigma(o) \tanh(\gamma_c \odot LN(c') + \beta_c)
    $$

    with parameters `layer_norm_gates.weight` (`(4, hidden_size)`) and `layer_norm_cell.weight` / `.bias`,
    initialised to the identity; `"recurrent"` has `layer_norm_hh.weight` instead of
    `layer_norm_gates.weight`, `"separate"` both `layer_norm_ih.weight` and `layer_norm_hh.weight`,
    `"scaled"` both `layer_norm_input.weight` and `layer_norm_hh.weight`. From a
    zero state the first `"joint"` step sees `W_ih x` alone, so only the direction of `x` counts there.

    Args:
        input_size: number of input features.
        hidden_size: number of hidden features.
        bias: use `bias_ih` and `bias_hh` (and the cell-norm shift).
        device: parameter device.
        dtype: parameter dtype.
        layer_norm: `"scaled"`, `"separate"`, `"joint"` or `"recurrent"`: use the layer-normalised step;
            `True` is `"scaled"`, `False` (default) is torch's step.
        zoneout: probability that each unit keeps its previous value (Krueger et al. 2017), a fresh mask
            per call; eval returns the expectation `p h + (1 - p) h'`. A pair `(hidden, cell)` sets the two apart. The per-sequence regularisers
            need a mask that lasts a whole sequence: use `LSTM` / `GRU` for them.

    Raises:
        TypeError: if `layer_norm` is neither a bool nor a string, or `zoneout` not a probability (or a pair).
        ValueError: for another string as `layer_norm`, or `zoneout` outside `[0, 1)`.

    Examples:
        >>> cell = LSTMCell(3, 4, layer_norm=True)
        >>> h, c = cell(torch.randn(2, 3))
        >>> h.shape, c.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    num_gates = 4

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """torch's `LSTMCell.forward`, or the layer-normalised step (same shapes and checks); then zoneout."""
        if any(self.zoneout):
            if hx is None:
                zeros = input.new_zeros(*input.shape[:-1], self.hidden_size)
                hx = (zeros, zeros)
            h, c = self._zoneout(self._step(input, hx), hx)
            return h, c
        return self._step(input, hx)

    def _step(self, input: Tensor, hx: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if not self.layer_norm:
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        self._check_step(input, list(hx))
        gain_ih, gain = self._gains()
        joint = self.layer_norm_variant == "joint"
        shift = lstm_gate_shift(self.bias_ih, self.bias_hh, gain)
        scaled = self.layer_norm_variant == "scaled"
        gates = lstm_input_gates(
            input, self.weight_ih, gain_ih, shift, self.layer_norm_eps, joint, scaled=scaled
        )
        h, c = lstm_layer_norm_step(
            gates,
            hx[0],
            hx[1],
            self.weight_hh,
            gain,
            shift if joint else None,
            self.layer_norm_cell.weight,
            self.layer_norm_cell.bias,
            None,
            self.layer_norm_eps,
            joint,
        )
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_LayerNormCellMixin, nn.GRUCell):
    r"""`torch.nn.GRUCell` plus keyword-only `layer_norm` and `zoneout` options.

    With layer norm on, the step is the layer-normalised GRU of `rnn_stability.nn.GRU` (after Ba, Kiros &
    Hinton (2016), "Layer Normalization"), with the same variants. For `"joint"`, with
    $x = W_{ih} x_t$ and $u = W_{hh} h$ in $(r, z, n)$ blocks and $s = (b_{ir} + b_{hr}, b_{iz} + b_{hz},
    b_{in})$: $r = \sigma(\gamma_r \odot LN(x_r + u_r) + s_r)$, $z = \sigma(\gamma_z \odot LN(x_z + u_z) +
    s_z)$, $n = \tanh(\gamma_n \odot LN(x_n + r \odot u_n) + s_n + r \odot b_{hn})$, $h' = (1 - z) n + z h$.
    Gains of shape `(3, hidden_size)`, initialised to 1: `layer_norm_gates.weight` (`"joint"`),
    `layer_norm_hh.weight` (`"recurrent"`), `layer_norm_ih.weight` and `layer_norm_hh.weight` (`"separate"`),
    `layer_norm_input.weight` and `layer_norm_hh.weight` (`"scaled"`).

    Args:
        input_size: number of input features.
        hidden_size: number of hidden features.
        bias: use `bias_ih` and `bias_hh`.
        device: parameter device.
        dtype: parameter dtype.
        layer_norm: `"scaled"`, `"separate"`, `"joint"` or `"recurrent"`: use the layer-normalised step;
            `True` is `"scaled"`, `False` (default) is torch's step.
        zoneout: probability that each unit keeps its previous value (Krueger et al. 2017), a fresh mask
            per call; eval returns the expectation `p h + (1 - p) h'`. The per-sequence regularisers
            need a mask that lasts a whole sequence: use `LSTM` / `GRU` for them.

    Raises:
        TypeError: if `layer_norm` is neither a bool nor a string, or `zoneout` not a probability.
        ValueError: for another string as `layer_norm`, or `zoneout` outside `[0, 1)`.

    Examples:
        >>> cell = GRUCell(3, 4, layer_norm=True)
        >>> cell(torch.randn(2, 3)).shape
        torch.Size([2, 4])
    """

    num_gates = 3

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        """torch's `GRUCell.forward`, or the layer-normalised step (same shapes and checks); then zoneout."""
        if any(self.zoneout):
            if hx is None:
                hx = input.new_zeros(*input.shape[:-1], self.hidden_size)
            return self._zoneout((self._step(input, hx),), (hx,))[0]
        return self._step(input, hx)

    def _step(self, input: Tensor, hx: Tensor | None) -> Tensor:
        if not self.layer_norm:
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        self._check_step(input, [hx])
        gain_ih, gain = self._gains()
        joint = self.layer_norm_variant == "joint"
        eps = self.layer_norm_eps
        scaled = self.layer_norm_variant == "scaled"
        gates, shift, bias_hn = gru_input_gates(
            input, self.weight_ih, gain_ih, self.bias_ih, self.bias_hh, eps, joint, scaled=scaled
        )
        h = gru_layer_norm_step(gates, hx, self.weight_hh, gain, shift, bias_hn, eps, joint)
        return h if is_batched else h.squeeze(0)
