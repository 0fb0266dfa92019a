"""Drop-in `torch.nn.LSTM` with optional layer normalisation and residual connections."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnn_stability.nn.fused import LSTMLayerNormFunction
from rnn_stability.nn.layer_norm import LayerNormVariant
from rnn_stability.nn.native import LSTMLayerNormLayerNative, native_lstm_supported, run_inference
from rnn_stability.nn.recurrence import lstm_gate_shift, lstm_input_gates, lstm_layer_norm_sequence
from rnn_stability.nn.regularization import LayerMasks
from rnn_stability.nn.stacked import StackedRNNMixin, use_fused

__all__ = ["LSTM"]


class LSTM(StackedRNNMixin, nn.LSTM):
    r"""`torch.nn.LSTM` plus keyword-only `layer_norm`, `residual` and regularisation options.

    Constructor arguments, defaults, parameter names, gate order `(i, f, g, o)`, `state_dict` keys, input
    and output shapes (`batch_first`, `PackedSequence`, unbatched input, optional `(h0, c0)`) and errors
    are torch's. With both options off, `forward` *is* `torch.nn.LSTM.forward` (torch's native kernel), so
    outputs are bit-identical and a torch checkpoint loads unchanged.

    `layer_norm` — layer-normalised LSTM after Ba, Kiros & Hinton (2016), "Layer Normalization",
    arXiv:1607.06450. Per layer and direction, with `LN` normalising each `H`-wide gate block on its own
    (zero mean, unit variance, `eps=1e-5`), the gates are, by variant:

    $$
    \begin{aligned}
    \text{joint:} \quad (i, f, g, o) &= \gamma \odot LN(W_{ih} x_t + W_{hh} h_{t-1}) + b_{ih} + b_{hh} \\
    \text{recurrent:} \quad (i, f, g, o) &= W_{ih} x_t + b_{ih} + \gamma_{hh} \odot LN(W_{hh} h_{t-1}) + b_{hh} \\
    \text{separate:} \quad (i, f, g, o) &= \gamma_{ih} \odot LN(W_{ih} x_t) + b_{ih}
        + \gamma_{hh} \odot LN(W_{hh} h_{t-1}) + b_{hh} \\
    \text{scaled:} \quad (i, f, g, o) &= \gamma_{ih} \odot LN(W_{ih} x_t) \cdot \bar{x}_t + b_{ih}
        + \gamma_{hh} \odot LN(W_{hh} h_{t-1}) + b_{hh}, \quad
        \bar{x}_t = \tfrac{1}{F} \textstyle\sum_j |x_{t,j}|
    \end{aligned}
    $$

    and then, for all of them,

    $$
    c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g), \qquad
    h_t = \sigma(o) \odot \tanh(\gamma_c \odot LN(c_t) + \beta_c) \quad (h_t = W_{hr} h_t
    \text{ if } proj\_size > 0)
    $$

    `"joint"` normalises the summed input of each gate as Ba et al. do for a recurrent layer (their eq. 4)
    and TensorFlow's `LayerNormBasicLSTMCell` does for the LSTM: the input keeps its scale relative to the
    recurrent term. `"separate"` (haste's `LayerNormLSTM`) normalises `W_ih x_t` on its own, which keeps
    only its direction: with one or a few input features the module is nearly blind to the input's magnitude
    (one feature: only its sign is left). `"scaled"` (what `True` means) multiplies that normalised
    projection by the mean absolute value $\bar{x}_t$ of the `F` input features, so it scales with the input
    as torch's `W_ih x_t` does (`rnn_stability.nn.layer_norm.scaled_gate_layer_norm`) while an input of unit
    scale still gets a projection of unit scale. `"recurrent"` leaves the input projection as torch has it.
    The cell state `c_t` is carried un-normalised; only its read-out is normalised. `"scaled"` trained as
    well as `"separate"` on the stability suite (`benchmarks/results/stability`), where `"joint"` lost most
    adding and digit runs, and forecasts a univariate series about as well as torch and `"joint"`
    (`benchmarks/results/layer_norm_variants.md`).

    Parameters (`_reverse` suffix for the backward direction), gains starting at 1 and shifts at 0:
    $\gamma$ is `layer_norm_gates_l{k}.weight`, $\gamma_{ih}$ is `layer_norm_ih_l{k}.weight` (`"separate"`)
    or `layer_norm_input_l{k}.weight` (`"scaled"`), $\gamma_{hh}$ is `layer_norm_hh_l{k}.weight` (shape
    `(4, hidden_size)` each), and $\gamma_c, \beta_c$ are `layer_norm_cell_l{k}.weight` / `.bias` (no
    $\beta_c$ when `bias=False`). The gain names tell the variants apart: a checkpoint loads into the
    variant that saved it, and loading it into another one warns which to pick (checkpoints saved when
    `True` meant `"separate"` load with `layer_norm="separate"`). A plain torch `state_dict` loads with
    `strict=False` reporting only the layer-norm parameters as missing. The input projection (and its
    normalisation) is computed for all time steps at once; only the recurrent part runs step by step.

    How the layer-norm path runs: for input whose sequences all have the same length, each layer and direction
    runs a C++ time loop on CPU in float32/float64 (`rnn_stability.nn.native`, built just in time; set
    `RNN_STABILITY_NATIVE=0` to skip it) and a PyTorch loop with a hand-written backward otherwise
    (`rnn_stability.nn.fused`). Both are first-order only, as with torch's cuDNN RNN kernels (no double
    backward: they are `once_differentiable`). Packed sequences of unequal lengths and `torch.compile`
    differentiate the step loop of `rnn_stability.nn.recurrence` with autograd instead.

    Regularisers (`rnn_stability.nn.regularization`; all off by default, masks from torch's generator or
    `mask_generator`): `weight_dropout` multiplies each `weight_hh_l{k}` by a DropConnect mask $M / (1-p)$
    drawn once per forward pass (AWD-LSTM); the Parameters and `state_dict` stay as they are, and without
    other options each layer still runs torch's kernel with the masked weight. `recurrent_dropout` uses
    $W_{hh} (h_{t-1} \odot m)$ with one mask $m / (1-p)$ per sequence (Gal & Ghahramani 2016; Keras's
    semantics: the gates share it). `input_dropout` multiplies each layer's input by one mask per sequence
    (locked dropout), besides torch's `dropout` between layers. `zoneout` (Krueger et al. 2017):
    $h_t = d_t \odot h_{t-1} + (1 - d_t) \odot \tilde h_t$, likewise $c_t$, $d_t \sim$ Bernoulli$(p)$
    at every step, $d_t = p$ in eval. `batch_norm` (Laurent et al. 2016, "Batch Normalized Recurrent
    Neural Networks") replaces $W_{ih} x_t$ by
    $\gamma \odot (W_{ih} x_t - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta$, with $\mu, \sigma^2$ the mean
    and (biased) variance of $W_{ih} x_t$ over the batch and all valid time steps in training (running
    averages, momentum 0.1, in eval), $\gamma, \beta$ in `batch_norm_ih_l{k}` (a `BatchNorm1d`); the
    biases and any layer norm come after it. The three dropouts are exactly no-ops in `eval()`.

    `residual=True` — every layer whose input width equals its output width (`hidden_size` or
    `proj_size`, times 2 when bidirectional) adds its input to its output, before the inter-layer dropout
    is applied to the next layer's input: all layers but the first, and the first too when `input_size`
    matches (see `residual_layers`). Without `layer_norm` each layer still runs torch's kernel.

    Args:
        input_size: number of features of the input `x`.
        hidden_size: number of features of the hidden state `h`.
        num_layers: number of stacked LSTM layers.
        bias: use the biases `b_ih` and `b_hh` (and the cell-norm shift $\beta_c$ with `layer_norm`).
        batch_first: input and output are `(batch, seq, feature)` instead of `(seq, batch, feature)`.
        dropout: dropout probability on the outputs of each layer except the last.
        bidirectional: run a second, reversed direction per layer and concatenate the outputs.
        proj_size: if > 0, project `h` to this size (LSTM with projections).
        device: device of the parameters.
        dtype: dtype of the parameters.
        layer_norm: `"scaled"`, `"separate"`, `"joint"` or `"recurrent"`: normalise gate pre-activations
            and the cell read-out as above; `True` is `"scaled"`, `False` (default) turns it off.
        residual: add each width-preserving layer's input to its output.
        weight_dropout: DropConnect probability on every `weight_hh_l{k}` (one mask per forward pass).
        recurrent_dropout: variational dropout probability on `h_{t-1}` entering `W_hh` (one mask per
            sequence and layer / direction).
        input_dropout: dropout probability on each layer's input, one mask per sequence shared over time.
        zoneout: probability that a unit keeps its previous value, per step; a pair `(hidden, cell)` sets the two apart.
        batch_norm: batch-normalise the input projection `W_ih x_t` over batch and time (running
            statistics in eval).

    Raises:
        TypeError: if `layer_norm` is neither a bool nor a string, `residual` or `batch_norm` not a bool, a
            probability not a number (`zoneout`: nor a pair), or for torch's own type checks.
        ValueError: for another string as `layer_norm`, a probability outside `[0, 1)`, `batch_norm` with
            `layer_norm="scaled"` (or `True`) or `"separate"`, and torch's own checks (sizes, `dropout`,
            `proj_size`).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> lstm = LSTM(8, 16, num_layers=2, batch_first=True, layer_norm=True, residual=True)
        >>> out, (h, c) = lstm(torch.randn(4, 5, 8))
        >>> out.shape, h.shape, c.shape
        (torch.Size([4, 5, 16]), torch.Size([2, 4, 16]), torch.Size([2, 4, 16]))
        >>> lstm.residual_layers()
        [1]
        >>> isinstance(lstm, torch.nn.LSTM)
        True
        >>> lstm.layer_norm_variant, LSTM(1, 4, layer_norm="recurrent").layer_norm_hh_l0.weight.shape
        ('scaled', torch.Size([4, 4]))
    """

    num_gates = 4
    _layer_norm_function = LSTMLayerNormFunction
    _joint_layer_norm_function = LSTMLayerNormFunction
    _layer_norm_sequence = staticmethod(lstm_layer_norm_sequence)

    # torch's `LSTM.__init__(*args, **kwargs)` forwards to `RNNBase` with exactly these arguments; spelled
    # out so that readers and type checkers see them. torch does all the checking.
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool | LayerNormVariant = False,
        residual: bool = False,
        weight_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device=device,
            dtype=dtype,
            layer_norm=layer_norm,
            residual=residual,
            weight_dropout=weight_dropout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
            zoneout=zoneout,
            batch_norm=batch_norm,
        )

    def _state_tuple(self, hx: Any, is_batched: bool) -> tuple[Tensor, ...]:
        h, c = hx
        if is_batched:
            if h.dim() != 3 or c.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx and cx should also be 3-D but got ({h.dim()}-D, {c.dim()}-D) tensors"
                )
            return h, c
        if h.dim() != 2 or c.dim() != 2:
            raise RuntimeError(
                f"For unbatched 2-D input, hx and cx should also be 2-D but got ({h.dim()}-D, {c.dim()}-D) tensors"
            )
        return h.unsqueeze(1), c.unsqueeze(1)

    def _state_output(self, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return state[0], state[1]

    def _native_layer(
        self, x: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, ...], weights: list[Tensor]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        if batch_sizes is None:
            out, h, c = torch._VF.lstm(  # type: ignore[attr-defined]
                x, hx, weights, self.bias, 1, 0.0, self.training, self.bidirectional, False
            )
        else:
            out, h, c = torch._VF.lstm(  # type: ignore[attr-defined]
                x, batch_sizes, hx, weights, self.bias, 1, 0.0, self.training, self.bidirectional
            )
        return out, (h, c)

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
        """The C++ loop of `rnn_stability.nn.native` where it applies, else the PyTorch loops.

        The C++ loop also runs recurrent dropout and zoneout, with layer norm or without (its variant
        `"none"`, torch's LSTM step).
        """
        if not self._native_loop_applies(masks):
            return super()._layer_norm_direction(x, step_sizes, hx, weights, suffix, reverse, masks)
        if self.layer_norm:
            bias_ih, bias_hh, gain_ih, gain = self._gate_parameters(weights, suffix)
            cell_norm: nn.LayerNorm = getattr(self, f"layer_norm_cell{suffix}")
            cell_weight: Tensor = cell_norm.weight
            cell_bias: Tensor | None = cell_norm.bias
            optional = [t for t in (cell_bias, gain_ih) if t is not None]  # (a Module's parameters() is slow)
            params = [*weights, gain, cell_weight, *optional]
            variant: str | None = self.layer_norm_variant
            shift = lstm_gate_shift(bias_ih, bias_hh, gain)
        else:
            gain_ih, cell_bias, params, variant = None, None, list(weights), "none"
            gain = cell_weight = weights[1].new_empty(0)
            shift = (weights[2] + weights[3]).view(4, -1) if self.bias else None
        if not (use_fused(step_sizes) and native_lstm_supported(x, *hx, *params)):
            return super()._layer_norm_direction(x, step_sizes, hx, weights, suffix, reverse, masks)
        assert variant is not None
        weight_hr = weights[-1] if self.proj_size > 0 else None
        # The C++ op computes the input projection itself (one product for all steps) and its gradients a chunk
        # of steps at a time: no (T, B, 4H) gradient is held for all steps. With batch norm it takes the
        # normalised projection instead.
        steps, weight_ih = self._native_input(x, step_sizes, weights[0], suffix, split_gates=True)
        inputs = (steps, weight_ih, gain_ih, shift, *hx, weights[1], gain, cell_weight, cell_bias, weight_hr)
        extra = self._native_masks(masks, step_sizes, 2)
        eps = self.layer_norm_eps
        if torch.is_grad_enabled():
            out, h, c = LSTMLayerNormLayerNative.apply(*inputs, eps, reverse, variant, True, *extra)
        else:
            out, h, c = run_inference("lstm_ln_forward", inputs, eps, reverse, variant, extra)[:3]
        return out.view(x.size(0), out.size(-1)), (h, c)

    def _layer_norm_inputs(
        self, x: Tensor, weights: list[Tensor], suffix: str
    ) -> tuple[Tensor, tuple[Tensor | float | None, ...]]:
        weight_hr = weights[-1] if self.proj_size > 0 else None
        eps = self.layer_norm_eps
        norm = self._input_norm(suffix)
        if not self.layer_norm:
            shift = weights[2] + weights[3] if self.bias else None
            gates = lstm_input_gates(x, weights[0], None, shift, eps, False, norm)
            return gates, (weights[1], None, None, None, None, weight_hr, eps, False)
        bias_ih, bias_hh, gain_ih, gain = self._gate_parameters(weights, suffix)
        joint = self.layer_norm_variant == "joint"
        shift = lstm_gate_shift(bias_ih, bias_hh, gain)
        scaled = self.layer_norm_variant == "scaled"
        gates = lstm_input_gates(x, weights[0], gain_ih, shift, eps, joint, norm, scaled)
        cell_norm: nn.LayerNorm = getattr(self, f"layer_norm_cell{suffix}")
        return gates, (
            weights[1],
            gain,
            shift if joint else None,
            cell_norm.weight,
            cell_norm.bias,
            weight_hr,
            eps,
            joint,
        )
