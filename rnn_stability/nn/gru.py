"""Drop-in `torch.nn.GRU` with optional layer normalisation and residual connections."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnn_stability.nn.fused import GRULayerNormFunction
from rnn_stability.nn.fused_joint import GRUJointLayerNormFunction
from rnn_stability.nn.layer_norm import LayerNormVariant
from rnn_stability.nn.native import native_lstm_supported, run_inference
from rnn_stability.nn.native_gru import GRULayerNormLayerNative, gru_shift
from rnn_stability.nn.recurrence import gru_input_gates, gru_layer_norm_sequence
from rnn_stability.nn.regularization import LayerMasks
from rnn_stability.nn.stacked import StackedRNNMixin, use_fused

__all__ = ["GRU"]


class GRU(StackedRNNMixin, nn.GRU):
    r"""`torch.nn.GRU` plus keyword-only `layer_norm`, `residual` and regularisation options.

    Constructor arguments, defaults, parameter names, gate order `(r, z, n)`, `state_dict` keys, shapes
    and errors are torch's. With both options off, `forward` *is* `torch.nn.GRU.forward` (torch's native
    kernel): bit-identical outputs.

    `layer_norm` — the GRU analogue of the layer-normalised LSTM (`rnn_stability.nn.LSTM`; Ba, Kiros &
    Hinton (2016), "Layer Normalization", arXiv:1607.06450), `LN` normalising each `H`-wide gate block on its
    own, torch's placement of $b_{hn}$ inside the reset product kept. With $x = W_{ih} x_t$ and
    $u = W_{hh} h_{t-1}$ split into their $(r, z, n)$ blocks, `"joint"` normalises the
    summed input of each gate, the candidate's after the reset gate:

    $$
    \begin{aligned}
    r &= \sigma(\gamma_r \odot LN(x_r + u_r) + b_{ir} + b_{hr}), \quad
    z = \sigma(\gamma_z \odot LN(x_z + u_z) + b_{iz} + b_{hz}) \\
    n &= \tanh(\gamma_n \odot LN(x_n + r \odot u_n) + b_{in} + r \odot b_{hn})
    \end{aligned}
    $$

    `"recurrent"`, `"separate"` and `"scaled"` normalise the projections apart, with
    $a^x = x + b_{ih}$ (`"recurrent"`), $a^x = \gamma_{ih} \odot LN(x) + b_{ih}$ (`"separate"`) or
    $a^x = \gamma_{ih} \odot LN(x) \cdot \bar{x}_t + b_{ih}$ with $\bar{x}_t$ the mean absolute value of
    the input features (`"scaled"`, so that $a^x$ scales with the input), and
    $a^h = \gamma_{hh} \odot LN(u) + b_{hh}$:

    $$
    r = \sigma(a^x_r + a^h_r), \quad z = \sigma(a^x_z + a^h_z), \quad n = \tanh(a^x_n + r \odot a^h_n)
    $$

    and then $h_t = (1 - z) \odot n + z \odot h_{t-1}$ for all of them. Why `"scaled"` (what `True` means)
    is the default and when to prefer another: see `rnn_stability.nn.LSTM` and the guide. Gains of shape
    `(3, hidden_size)`, initialised to 1, are `layer_norm_gates_l{k}.weight` ($\gamma$),
    `layer_norm_hh_l{k}.weight` ($\gamma_{hh}$) and $\gamma_{ih}$, `layer_norm_ih_l{k}.weight`
    (`"separate"`) or `layer_norm_input_l{k}.weight` (`"scaled"`) (`_reverse` for the backward direction); the existing biases play the role of the LayerNorm shifts. A torch `state_dict` loads with
    `strict=False` reporting only these as missing.

    How the layer-norm path runs: for input whose sequences all have the same length, each layer and direction
    runs a C++ time loop on CPU in float32/float64 (`rnn_stability.nn.native_gru`, built just in time with the
    LSTM's; `RNN_STABILITY_NATIVE=0` skips it) and otherwise a PyTorch loop with a hand-written backward
    (`rnn_stability.nn.fused`, `rnn_stability.nn.fused_joint`). Both are first-order only
    (`once_differentiable`: no double backward), as with torch's cuDNN RNN kernels; packed sequences of
    unequal lengths and `torch.compile` differentiate the step loop with autograd instead.

    The regularisers `weight_dropout`, `recurrent_dropout`, `input_dropout`, `zoneout` and `batch_norm` are
    those of `rnn_stability.nn.LSTM` (formulas there); recurrent dropout masks $h_{t-1}$ in $W_{hh} h_{t-1}$
    only, the update $z \odot h_{t-1}$ keeps the undropped state, as in Keras.

    `residual=True` — every layer whose input width equals its output width (`hidden_size`, times 2 when
    bidirectional) adds its input to its output before inter-layer dropout: all layers but the first, and the
    first too when `input_size` matches (see `residual_layers`).

    Args:
        input_size: number of features of the input `x`.
        hidden_size: number of features of the hidden state `h`.
        num_layers: number of stacked GRU layers.
        bias: use the biases `b_ih` and `b_hh`.
        batch_first: input and output are `(batch, seq, feature)` instead of `(seq, batch, feature)`.
        dropout: dropout probability on the outputs of each layer except the last.
        bidirectional: run a second, reversed direction per layer and concatenate the outputs.
        device: device of the parameters.
        dtype: dtype of the parameters.
        layer_norm: `"scaled"`, `"separate"`, `"joint"` or `"recurrent"`: normalise the gate
            pre-activations as above; `True` is `"scaled"`, `False` (default) turns it off.
        residual: add each width-preserving layer's input to its output.
        weight_dropout: DropConnect probability on every `weight_hh_l{k}` (one mask per forward pass).
        recurrent_dropout: variational dropout probability on `h_{t-1}` entering `W_hh` (one mask per
            sequence and layer / direction).
        input_dropout: dropout probability on each layer's input, one mask per sequence shared over time.
        zoneout: probability that a unit keeps its previous value, per step.
        batch_norm: batch-normalise the input projection `W_ih x_t` over batch and time (running
            statistics in eval).
        **kwargs: passed to torch, which rejects `proj_size` (LSTM only) with a `ValueError`.

    Raises:
        TypeError: if `layer_norm` is neither a bool nor a string, `residual` or `batch_norm` not a bool, a
            probability not a number, or for torch's own type checks.
        ValueError: for another string as `layer_norm`, a probability outside `[0, 1)`, `batch_norm` with
            `layer_norm="scaled"` (or `True`) or `"separate"`, and torch's own checks (sizes, `dropout`,
            `proj_size` given to a GRU).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> gru = GRU(8, 8, num_layers=2, layer_norm=True, residual=True)
        >>> out, h = gru(torch.randn(5, 4, 8))
        >>> out.shape, h.shape
        (torch.Size([5, 4, 8]), torch.Size([2, 4, 8]))
        >>> gru.residual_layers()
        [0, 1]
    """

    num_gates = 3
    _layer_norm_function = GRULayerNormFunction
    _joint_layer_norm_function = GRUJointLayerNormFunction
    _layer_norm_sequence = staticmethod(gru_layer_norm_sequence)

    # torch's `GRU.__init__(*args, **kwargs)` with its documented arguments spelled out, so that readers and
    # type checkers see them; `**kwargs` still reaches torch, which rejects `proj_size` with its own error.
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool | LayerNormVariant = False,
        residual: bool = False,
        weight_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        zoneout: float = 0.0,
        batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            layer_norm=layer_norm,
            residual=residual,
            weight_dropout=weight_dropout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
            zoneout=zoneout,
            batch_norm=batch_norm,
            **kwargs,
        )

    def _state_tuple(self, hx: Any, is_batched: bool) -> tuple[Tensor, ...]:
        if is_batched:
            if hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            return (hx,)
        if hx.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
        return (hx.unsqueeze(1),)

    def _state_output(self, state: tuple[Tensor, ...]) -> Tensor:
        return state[0]

    def _native_layer(
        self, x: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, ...], weights: list[Tensor]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        if batch_sizes is None:
            out, h = torch._VF.gru(  # type: ignore[attr-defined]
                x, hx[0], weights, self.bias, 1, 0.0, self.training, self.bidirectional, False
            )
        else:
            out, h = torch._VF.gru(  # type: ignore[attr-defined]
                x, batch_sizes, hx[0], weights, self.bias, 1, 0.0, self.training, self.bidirectional
            )
        return out, (h,)

    def _layer_norm_direction(
        self,
        x: Tensor,
        step_sizes: list[int],
        hx: tuple[Tensor, ...],
        weights: list[Tensor],
        suffix: str,
        reverse: bool,
        masks: LayerMasks,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The C++ loop of `rnn_stability.nn.native_gru` where it applies, else the PyTorch loops.

        The C++ loop also runs recurrent dropout and zoneout, with layer norm or without (its variant
        `"none"`, torch's GRU step).
        """
        if not self._native_loop_applies(masks):
            return super()._layer_norm_direction(x, step_sizes, hx, weights, suffix, reverse, masks)
        if self.layer_norm:
            bias_ih, bias_hh, gain_ih, gain = self._gate_parameters(weights, suffix)
            params = [*weights, gain, *([] if gain_ih is None else [gain_ih])]
            variant: str | None = self.layer_norm_variant
        else:
            bias_ih, bias_hh = (weights[2], weights[3]) if self.bias else (None, None)
            gain_ih, gain, params, variant = None, weights[1].new_empty(0), list(weights), "none"
        if not (use_fused(step_sizes) and native_lstm_supported(x, *hx, *params)):
            return super()._layer_norm_direction(x, step_sizes, hx, weights, suffix, reverse, masks)
        assert variant is not None
        shift, bias_hn = gru_shift(bias_ih, bias_hh)
        steps, weight_ih = self._native_input(x, step_sizes, weights[0], suffix, split_gates=False)
        inputs = (steps, weight_ih, gain_ih, shift, bias_hn, hx[0], weights[1], gain)
        extra = self._native_masks(masks, step_sizes, 1)
        eps = self.layer_norm_eps
        if torch.is_grad_enabled():
            out, h = GRULayerNormLayerNative.apply(*inputs, eps, reverse, variant, True, *extra)
        else:
            out, h = run_inference("gru_ln_forward", inputs, eps, reverse, variant, extra)[:2]
        return out.view(x.size(0), out.size(-1)), (h,)

    def _layer_norm_inputs(
        self, x: Tensor, weights: list[Tensor], suffix: str
    ) -> tuple[Tensor, tuple[Tensor | float | None, ...]]:
        eps = self.layer_norm_eps
        norm = self._input_norm(suffix)
        if not self.layer_norm:
            bias_ih, bias_hh = (weights[2], weights[3]) if self.bias else (None, None)
            gates, _, bias_hn = gru_input_gates(x, weights[0], None, bias_ih, bias_hh, eps, False, norm)
            return gates, (weights[1], None, None, bias_hn, eps, False)
        bias_ih, bias_hh, gain_ih, gain = self._gate_parameters(weights, suffix)
        joint = self.layer_norm_variant == "joint"
        scaled = self.layer_norm_variant == "scaled"
        gates, shift, bias_hn = gru_input_gates(
            x, weights[0], gain_ih, bias_ih, bias_hh, eps, joint, norm, scaled
        )
        return gates, (weights[1], gain, shift, bias_hn, eps, joint)
