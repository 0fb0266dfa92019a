"""Shared machinery of our LSTM and GRU: options, layer-norm parameters, and the stacked forward pass.

With both options off the modules call torch's native kernel (`super().forward`) unchanged. Otherwise the
stack is run one layer at a time, so that residual connections can be added between layers: with
`layer_norm=False` each layer still runs torch's native one-layer kernel (unless recurrent dropout, zoneout or
batch norm act); with layer norm on each layer and direction computes its input projection (and, for
`"separate"` and `"scaled"`, its layer norm) for all steps at once, then runs the recurrent part step by step:
`rnn_stability.nn.fused` (hand-written backward) when all sequences have one length (the C++ loops of
`rnn_stability.nn.native` / `native_gru` instead where they can: CPU, float32 or float64; they also run
recurrent dropout and zoneout, with layer norm or without), the autograd loops of
`rnn_stability.nn.recurrence` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from rnn_stability.nn.layer_norm import (
    DEFAULT_LAYER_NORM,
    GATE_NORMS,
    INPUT_NORMS,
    GateLayerNorm,
    LayerNormOption,
    LayerNormVariant,
    check_layer_norm,
)
from rnn_stability.nn.regularization import REGULARIZERS, LayerMasks, apply_locked, draw_masks, loop_zoneout
from rnn_stability.nn.regularized import RegularizedRNNMixin, check_flag
from rnn_stability.nn.scripting import torch_module_for_scripting

__all__ = ["StackedRNNMixin", "check_flag", "split_steps", "use_fused"]


class StackedRNNMixin(LayerNormOption, RegularizedRNNMixin, nn.RNNBase):
    """Adds `layer_norm` / `residual` and the regularisers of `rnn_stability.nn.regularization` to a torch RNN
    class; listed before it in the bases.

    Subclasses set `num_gates`, `_layer_norm_function`, `_joint_layer_norm_function` and
    `_layer_norm_sequence` and implement `_state_tuple`, `_state_output`, `_native_layer` and
    `_layer_norm_inputs`.
    """

    num_gates: int
    # Time loops of the layer-norm path: hand-written backward (fixed batch size; the second one for
    # `layer_norm="joint"`) and autograd fallback.
    _layer_norm_function: ClassVar[type[torch.autograd.Function]]
    _joint_layer_norm_function: ClassVar[type[torch.autograd.Function]]
    _layer_norm_sequence: ClassVar[Callable[..., tuple[Tensor, ...]]]
    layer_norm: bool | LayerNormVariant
    residual: bool

    def __init__(
        self,
        *args: Any,
        layer_norm: bool | LayerNormVariant = False,
        residual: bool = False,
        weight_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.layer_norm = check_layer_norm(layer_norm)
        self.residual = check_flag("residual", residual)
        self._set_regularizers(weight_dropout, recurrent_dropout, input_dropout, zoneout, batch_norm)
        variant = self.layer_norm_variant
        if self.batch_norm and variant in INPUT_NORMS:
            raise ValueError(
                f"`batch_norm` normalises the input projection, which layer_norm={variant!r}"
                f"{' (what True means)' if variant == DEFAULT_LAYER_NORM else ''} normalises too: combine "
                "batch_norm with layer_norm='recurrent', 'joint' or False"
            )
        weight = self._flat_weights[0]
        assert isinstance(weight, Tensor)
        factory: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
        self._add_batch_norms(self._direction_suffixes(), factory)
        if variant is not None:
            for suffix in self._direction_suffixes():
                for name in GATE_NORMS[variant]:
                    setattr(
                        self, f"{name}{suffix}", GateLayerNorm(self.num_gates, self.hidden_size, **factory)
                    )
                if self.mode == "LSTM":
                    setattr(
                        self,
                        f"layer_norm_cell{suffix}",
                        nn.LayerNorm(self.hidden_size, bias=self.bias, **factory),
                    )

    def _direction_suffixes(self) -> list[str]:
        """`_l{k}` / `_l{k}_reverse` suffixes in torch's parameter order (layer-major)."""
        directions = ["", "_reverse"] if self.bidirectional else [""]
        return [f"_l{layer}{direction}" for layer in range(self.num_layers) for direction in directions]

    def reset_parameters(self) -> None:
        """torch's uniform init for the recurrent weights; layer-norm gains 1 and biases 0."""
        super().reset_parameters()
        for module in self.children():
            if isinstance(module, (GateLayerNorm, nn.LayerNorm, nn.BatchNorm1d)):
                module.reset_parameters()

    def residual_layers(self) -> list[int]:
        """Indices of the layers that add their input to their output when `residual=True`.

        A layer qualifies when its input width equals its output width (`hidden_size` or `proj_size`,
        times 2 if bidirectional). That is always true for layers 1, 2, ...; layer 0 qualifies only when
        `input_size` matches, since adding tensors of different widths would need an extra projection.
        """
        if not self.residual:
            return []
        width = (self.proj_size or self.hidden_size) * (2 if self.bidirectional else 1)
        first = 0 if self.input_size == width else 1
        return list(range(first, self.num_layers))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.layer_norm:
            s += f", layer_norm={self.layer_norm!r}"
        if self.residual:
            s += ", residual=True"
        return s + self._regularizer_repr()

    def __prepare_scriptable__(self) -> nn.Module:
        """For `torch.jit.script`: torch's module with the same state (see `rnn_stability.nn.scripting`)."""
        return torch_module_for_scripting(self, ("layer_norm", "residual", *REGULARIZERS))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Modules pickled from torch.nn.LSTM / GRU (or an older version) have no options.
        self.__dict__.setdefault("layer_norm", False)
        self.__dict__.setdefault("residual", False)
        for name, off in REGULARIZERS.items():
            self.__dict__.setdefault(name, off)

    # ---- mode-specific hooks --------------------------------------------------------------------------------
    def _state_tuple(self, hx: Any, is_batched: bool) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _state_output(self, state: tuple[Tensor, ...]) -> Any:
        raise NotImplementedError

    def _native_layer(
        self, x: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, ...], weights: list[Tensor]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        raise NotImplementedError

    def _layer_norm_inputs(
        self, x: Tensor, weights: list[Tensor], suffix: str
    ) -> tuple[Tensor, tuple[Tensor | float | None, ...]]:
        """Input gates of one direction for all steps, and the recurrent arguments after the state."""
        raise NotImplementedError

    def _gate_parameters(
        self, weights: list[Tensor], suffix: str
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor]:
        """`(bias_ih, bias_hh, gain_ih, gain)` of one layer and direction.

        `gain` multiplies the normalised `W_hh h` (`"recurrent"`, `"separate"`, `"scaled"`) or the normalised
        sum `W_ih x + W_hh h` (`"joint"`); `gain_ih`, that of the normalised `W_ih x`, is `None` but with
        `"separate"` and `"scaled"`.
        """
        bias_ih, bias_hh = (weights[2], weights[3]) if self.bias else (None, None)
        variant = self.layer_norm_variant
        gain = getattr(self, f"layer_norm_{'gates' if variant == 'joint' else 'hh'}{suffix}").weight
        name = INPUT_NORMS.get(variant)
        norm_ih = None if name is None else getattr(self, f"{name}{suffix}", None)
        return bias_ih, bias_hh, None if norm_ih is None else norm_ih.weight, gain

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
        """One direction run by our loops (layer norm, batch norm, recurrent dropout or zoneout).

        `_layer_norm_function` (hand-written backward, with the recurrent-dropout and zoneout masks but for
        the joint GRU's) for a constant batch size, else the loop of `rnn_stability.nn.recurrence` (which also
        runs the layers without layer norm). The subclasses run the C++ loops first where they apply
        (`_native_loop_applies`).
        """
        gates, args = self._layer_norm_inputs(x, weights, suffix)
        zoneout = loop_zoneout(self, masks, step_sizes, len(hx))
        joint = self.layer_norm_variant == "joint"
        regularized = masks.recurrent is not None or any(z is not None for z in zoneout)
        # The hand-written-backward loops take the masks (`rnn_stability.nn.fused_masks`) but the joint GRU's.
        takes_masks = not (joint and self.mode == "GRU")
        if self.layer_norm and use_fused(step_sizes) and (takes_masks or not regularized):
            function = self._joint_layer_norm_function if joint else self._layer_norm_function
            extra = self._native_masks(masks, step_sizes, len(hx)) if regularized else ()
            # Under autocast an un-normalised input projection comes out in the lower precision; the loop's
            # preallocated buffers and `out=` products take the state's dtype, as with the normalised one.
            out, *final = function.apply(
                gates.to(hx[0].dtype).view(len(step_sizes), step_sizes[0], self.num_gates, self.hidden_size),
                *hx,
                *args,
                reverse,
                *extra,
            )
            out = out.view(x.size(0), out.size(-1))
        else:
            out, *final = self._layer_norm_sequence(
                split_steps(gates, step_sizes), *hx, args, reverse, masks.recurrent, zoneout
            )
        return out, tuple(final)

    # ---- forward --------------------------------------------------------------------------------------------
    def forward(self, input: Any, hx: Any = None) -> Any:
        """torch's forward when no option acts; otherwise the layer-by-layer stack (same signature)."""
        if not (self.layer_norm or self.residual or self._regularized()):
            return super().forward(input, hx)
        return self._stacked_forward(input, hx)

    def _zero_state(self, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h = torch.zeros(
            layers, batch, self.proj_size or self.hidden_size, dtype=like.dtype, device=like.device
        )
        if self.mode != "LSTM":
            return (h,)
        return h, torch.zeros(layers, batch, self.hidden_size, dtype=like.dtype, device=like.device)

    def _stacked_forward(self, input: Any, hx: Any) -> Any:
        self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        sorted_indices: Tensor | None = None
        unsorted_indices: Tensor | None = None
        batch_sizes: Tensor | None = None
        is_batched = True
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            state = self._zero_state(batch, data) if hx is None else self._state_tuple(hx, True)
            self.check_forward_args(data, self._state_output(state), batch_sizes)
            if hx is not None and sorted_indices is not None:
                state = tuple(s.index_select(1, sorted_indices) for s in state)
            x = data
            step_sizes = batch_sizes.tolist()
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            batch = input.size(0 if self.batch_first else 1)
            state = self._zero_state(batch, input) if hx is None else self._state_tuple(hx, is_batched)
            self.check_forward_args(input, self._state_output(state), None)
            if self.batch_first:
                input = input.transpose(0, 1)
            steps = input.size(0)
            if steps == 0:
                # torch's native kernels raise this for empty sequences too.
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            x = input.reshape(steps * batch, input.size(2))
            step_sizes = [batch] * steps

        out, final = self._run_layers(x, batch_sizes, step_sizes, state)

        if packed:
            final = (
                tuple(s.index_select(1, unsorted_indices) for s in final)
                if unsorted_indices is not None
                else final
            )
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), self._state_output(
                final
            )
        out = out.view(len(step_sizes), step_sizes[0], out.size(-1))
        if self.batch_first:
            out = out.transpose(0, 1).contiguous()
        if not is_batched:
            out = out.squeeze(0 if self.batch_first else 1)
            final = tuple(s.squeeze(1) for s in final)
        return out, self._state_output(final)

    def _run_layers(
        self, x: Tensor, batch_sizes: Tensor | None, step_sizes: list[int], state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run the stack on time-major flattened `x` of shape `(sum(step_sizes), features)`."""
        directions = 2 if self.bidirectional else 1
        per_direction = len(self._flat_weights) // (self.num_layers * directions)
        weights: list[Tensor] = self._flat_weights  # type: ignore[assignment]
        residual_layers = self.residual_layers()
        suffixes = self._direction_suffixes()
        masks = draw_masks(self, step_sizes, x, self.mask_generator)
        finals: list[tuple[Tensor, ...]] = []
        for layer in range(self.num_layers):
            first = layer * directions
            locked = masks[first].input
            x_in = x if locked is None else apply_locked(x, locked, step_sizes)
            ws = []
            for idx in range(first, first + directions):
                w = weights[idx * per_direction : (idx + 1) * per_direction]
                dropped = masks[idx].weight_hh
                # DropConnect: the masked copy goes where the kernel reads `weight_hh`; the Parameter stays.
                ws.append(w if dropped is None else [w[0], w[1] * dropped, *w[2:]])
            if self._needs_loop(masks[first]):
                outs = []
                for d in range(directions):
                    idx = first + d
                    hx = tuple(s[idx] for s in state)
                    out_d, final_d = self._layer_norm_direction(
                        x_in, step_sizes, hx, ws[d], suffixes[idx], d == 1, masks[idx]
                    )
                    outs.append(out_d)
                    finals.append(final_d)
                out = outs[0] if directions == 1 else torch.cat(outs, -1)
            else:
                w = [t for w_d in ws for t in w_d]
                hx = tuple(s[first : first + directions] for s in state)
                if batch_sizes is None:
                    out, final = self._native_layer(
                        x_in.view(len(step_sizes), step_sizes[0], x.size(-1)), None, hx, w
                    )
                    out = out.reshape(x.size(0), out.size(-1))
                else:
                    out, final = self._native_layer(x_in, batch_sizes, hx, w)
                finals.extend(zip(*final, strict=True))  # per direction, as the loops give them
            if layer in residual_layers:
                out = out + x
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                out = F.dropout(out, self.dropout, True)
            x = out
        return x, tuple(torch.stack(parts, 0) for parts in zip(*finals, strict=True))


def split_steps(x: Tensor, step_sizes: list[int]) -> list[Tensor]:
    """Split time-major flattened `x` into its time steps (`unbind` when all steps have one size)."""
    if step_sizes[0] == step_sizes[-1]:
        return list(x.view(len(step_sizes), step_sizes[0], *x.shape[1:]).unbind(0))
    return list(x.split(step_sizes, 0))


def use_fused(step_sizes: list[int]) -> bool:
    """Whether a layer-norm direction runs the hand-written-backward kernel of `rnn_stability.nn.fused`.

    It needs a constant batch size (packed sequences of unequal lengths use the autograd loops of `rnn_stability.nn.recurrence`) and is
    skipped under `torch.compile`, which traces the plain Python loop instead.
    """
    return step_sizes[0] == step_sizes[-1] and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
