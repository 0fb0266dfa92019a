"""Just-in-time build of the C++ time loops of the layer-normalised LSTM and GRU (`csrc/*.cpp`, one library).

The first `LSTM(layer_norm=True)` or `GRU(layer_norm=True)` forward on CPU compiles the kernels (a C++
compiler with OpenMP, such as gcc, and `ninja`, a dependency of this package, are needed). This takes about
20 s once and says so on stderr; the build is cached per environment (`rnn_stability.nn.native_build`: cache
folder, lock, validation), and `rnn-stability build-native` builds it ahead of time. If the build fails, or
another process's build holds the lock for longer than `RNN_STABILITY_NATIVE_LOCK_TIMEOUT` seconds, a warning
says why and the modules keep running the pure-PyTorch loops of `rnn_stability.nn.fused`, which compute the
same values more slowly. Set the environment variable `RNN_STABILITY_NATIVE=0` to skip the build and always
use the PyTorch loops. This module holds the LSTM's autograd binding; `rnn_stability.nn.native_gru` the GRU's.
The loops also run the `recurrent_dropout` and `zoneout` options, with layer norm or without (the variant
`"none"`: torch's own step), so those build the kernels on their first forward too.

The loops compute the input projection themselves and run the matrix products through oneDNN's packed-weight
linear in float32 where torch has it (`csrc/matmul.h`: 2-3x MKL's speed on AMD CPUs), keep for the backward
only what it cannot cheaply recompute, turn gate gradients into input and weight gradients a chunk of steps
at a time, and keep nothing when no gradient is needed. Their large per-step buffers live in a process-wide
pool that reuses a buffer once nothing references it, as torch's CUDA caching allocator does: on CPU, fresh
multi-megabyte allocations come from the OS page by page, and faulting them in cost more than the loop's
arithmetic. Up to 1 GiB of unused buffers is kept; `empty_cache` releases them all and `workspace_bytes`
reports what is held.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from rnn_stability.nn.native_build import ensure_built

__all__ = [
    "LSTMLayerNormLayerNative",
    "LSTMLayerNormNative",
    "empty_cache",
    "native_enabled",
    "native_lstm_supported",
    "native_ops",
    "run_inference",
    "workspace_bytes",
    "zoneout_argument",
]

_ENV = "RNN_STABILITY_NATIVE"
_lock = threading.Lock()
_state: dict[str, Any] = {}
_loaded: list[Any] = []  # the library loaded into this process, if any


def native_enabled() -> bool:
    """Whether the environment allows the C++ kernel (`RNN_STABILITY_NATIVE` is not `0`)."""
    return os.environ.get(_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _build() -> Any:
    """Load this environment's build of the kernel, compiling it first if needed; `torch.ops.rnn_stability`."""
    if not _loaded:  # a second library registering the same operators would abort the process
        build = ensure_built()
        torch.ops.load_library(str(build.library))
        _loaded.append(build.library)
    return torch.ops.rnn_stability


def native_ops() -> Any | None:
    """`torch.ops.rnn_stability` with the C++ kernel loaded, or `None` when it is disabled or cannot build.

    Builds on the first call and remembers the outcome for the process; a failed build warns once.
    """
    if not native_enabled():
        return None
    if "ops" in _state:  # decided: no lock (every layer of every forward asks)
        return _state["ops"]
    with _lock:
        if "ops" not in _state:
            try:
                _state["ops"] = _build()
            except Exception as error:  # no compiler or ninja, build error, lock timeout: fall back, say why
                _state["ops"] = None
                warnings.warn(
                    "rnn_stability: could not build or load the C++ layer-norm LSTM kernel, using the slower "
                    "PyTorch "
                    f"loop instead ({type(error).__name__}: {error}). Set {_ENV}=0 to skip the build.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["ops"]


def empty_cache() -> None:
    """Release the kernel's pooled buffers that nothing references (a no-op when the kernel is not loaded)."""
    if _state.get("ops") is not None:
        _state["ops"].empty_cache()


def workspace_bytes() -> int:
    """Bytes held by the kernel's buffer pool, in use or not (0 when the kernel is not loaded)."""
    return int(_state["ops"].workspace_bytes()) if _state.get("ops") is not None else 0


def native_lstm_supported(*tensors: torch.Tensor) -> bool:
    """Whether `LSTMLayerNormNative` can take `tensors`: all on CPU, all float32 or all float64,
    outside autocast, and the kernel is built (building it on the first call)."""
    dtype = tensors[0].dtype
    return (
        dtype in (torch.float32, torch.float64)
        and all(t.is_cpu and t.dtype is dtype for t in tensors)  # is_cpu: no device object per tensor
        and not torch.is_autocast_enabled("cpu")
        and native_ops() is not None
    )


def run_inference(
    op: str, inputs: tuple[Any, ...], eps: float, reverse: bool, variant: str, masks: Any
) -> Any:
    """The C++ op `op` (`lstm_ln_forward` or `gru_ln_forward`) keeping nothing for a backward, called
    directly: with gradients off the autograd Functions below record nothing, and their `apply` costs about
    12 us a layer and direction, a tenth of a small layer's whole step loop."""
    ops = _state.get("ops")  # loaded: the caller checked `native_lstm_supported` just before
    assert ops is not None
    masks = tuple(zoneout_argument(m, inputs[0]) for m in masks)  # a tensor mask or None passes as it is
    return getattr(ops, op)(*inputs, eps, reverse, False, variant, *masks)


def zoneout_argument(keep: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor | None:
    """A zoneout argument of the C++ ops: `(T, B, W)` keep masks as they are, a probability `p` (eval's
    expectation) as a 0-dim tensor of `like`'s dtype, `None` (or `p = 0`) as `None`."""
    if keep is None or isinstance(keep, torch.Tensor):
        return keep
    return torch.tensor(float(keep), dtype=like.dtype) if keep > 0 else None


def _forward(
    ctx: Any,
    inputs: tuple[torch.Tensor | None, ...],
    eps: float,
    reverse: bool,
    variant: str,
    grad: bool = True,
    masks: tuple[torch.Tensor | None, ...] = (None, None, None),
) -> Any:
    """Run `lstm_ln_forward` on `inputs` (its tensor arguments, `x` to `weight_hr`) and save what the backward
    reads; nothing when no input needs a gradient or `grad` is false (gradients were off where the function
    was applied: inside `forward` they always are, and `needs_input_grad` still says what requires one), so
    the loop keeps no per-step buffers for inference. `masks`: the recurrent-dropout mask and the zoneout
    arguments of the hidden and the cell state (constants: they get no gradient)."""
    save = grad and any(ctx.needs_input_grad)
    ops = native_ops()
    assert ops is not None
    out, h_n, c_n, xp_saved, pre_proj, *per_step = ops.lstm_ln_forward(
        *inputs, eps, reverse, save, variant, *masks
    )
    if save:
        x, weight_ih, gain_ih, shift, h0, c0, weight_hh, gain_hh, cell_weight, cell_bias, weight_hr = inputs
        # In the order lstm_ln_backward takes them after the output gradients.
        ctx.save_for_backward(
            x,
            weight_ih,
            xp_saved,
            gain_ih,
            shift,
            h0,
            c0,
            weight_hh,
            gain_hh,
            cell_weight,
            cell_bias,
            weight_hr,
            out,
            pre_proj,
            *per_step,
        )
    ctx.eps, ctx.reverse, ctx.variant, ctx.masks = eps, reverse, variant, masks
    ctx.ops = ops  # the backward runs the kernel that ran forward, whatever the environment says by then
    return out, h_n, c_n


def _backward(ctx: Any, grads: tuple[torch.Tensor, ...]) -> list[torch.Tensor | None]:
    """Gradients of `_forward`'s tensor inputs (`None` for those not given or not needing one)."""
    saved = ctx.saved_tensors
    result: list[torch.Tensor | None] = list(
        ctx.ops.lstm_ln_backward(
            *grads, *saved[:14], saved[14:], ctx.eps, ctx.reverse, ctx.variant, *ctx.masks
        )
    )
    # saved[0:2] are x and weight_ih, saved[3:12] gain_ih ... weight_hr: the inputs in their order.
    given = [True, saved[1] is not None, *(t is not None for t in saved[3:12])]
    return [g if present else None for g, present in zip(result, given, strict=True)]


class LSTMLayerNormNative(torch.autograd.Function):
    """One layer-normalised LSTM direction in C++, from the input projection; returns `(out, h_n, c_n)`.

    Takes `xp = W_ih x` of shape `(T, B, 4, H)` (all sequences of one length), the gain `gain_ih` of its
    own layer norm (`"separate"` only, else `None`), `shift = b_ih + b_hh` (`(4, H)` or `None`; for
    `"recurrent"` it may be added to `xp` instead), the state `(h0, c0)`, the recurrent parameters with
    `gain_hh` the gain of `LN(W_hh h)` (of `LN(xp + W_hh h)` for `"joint"`), `eps`, `reverse` and the
    variant. The formulas are those of `rnn_stability.nn.recurrence`; first-order differentiable only.
    `LSTMLayerNormLayerNative` takes the layer input and `W_ih` instead, and holds less memory.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xp: torch.Tensor,
        gain_ih: torch.Tensor | None,
        shift: torch.Tensor | None,
        h0: torch.Tensor,
        c0: torch.Tensor,
        weight_hh: torch.Tensor,
        gain_hh: torch.Tensor,
        cell_weight: torch.Tensor,
        cell_bias: torch.Tensor | None,
        weight_hr: torch.Tensor | None,
        eps: float,
        reverse: bool,
        variant: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = (xp, None, gain_ih, shift, h0, c0, weight_hh, gain_hh, cell_weight, cell_bias, weight_hr)
        return _forward(ctx, inputs, eps, reverse, variant)  # type: ignore[no-any-return]

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_out: torch.Tensor, grad_hn: torch.Tensor, grad_cn: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grads = _backward(ctx, (grad_out, grad_hn, grad_cn))
        need = ctx.needs_input_grad
        return tuple(g if n else None for g, n in zip([grads[0], *grads[2:]], need, strict=False)) + (
            None,
            None,
            None,
        )


class LSTMLayerNormLayerNative(torch.autograd.Function):
    """One layer-normalised LSTM direction in C++ from the layer input: `LSTMLayerNormNative` with the input
    projection inside. Takes `x` of shape `(T, B, in)` and `weight_ih` `(4H, in)` in place of `xp`, or
    (`weight_ih=None`) `xp` itself, `(T, B, 4, H)`: the batch-normalised projection of the `batch_norm` option.

    The C++ op computes `xp = x W_ih^T` itself (through oneDNN where it is faster) and turns the gate gradients
    into `dx` and `dW_ih` a chunk of steps at a time, so the gradient of `xp` is never held for all steps; it
    keeps `xp` for the backward only with the `"separate"` and `"scaled"` variants, whose backward reads it.
    `grad` is `torch.is_grad_enabled()` where it is applied: false keeps nothing for a backward.

    The variant `"none"` normalises nothing (torch's LSTM step: `gain_hh` and `cell_weight` are empty tensors,
    `gain_ih` and `cell_bias` `None`), for the regularisers below without layer norm. Optional, all `None` by
    default: `recurrent_mask`, a `(B, W)` recurrent-dropout mask on `h_{t-1}` where it enters `W_hh` (Gal &
    Ghahramani 2016), and `zone_h` / `zone_c`, zoneout (Krueger et al. 2017) of the hidden and the cell
    state: `(T, B, W)` 0/1 keep masks in time order, or the probability `p` (a float or 0-dim tensor: eval's
    expectation `p s_{t-1} + (1 - p) s_t`); the formulas of `rnn_stability.nn.recurrence`. The masks get no
    gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight_ih: torch.Tensor | None,
        gain_ih: torch.Tensor | None,
        shift: torch.Tensor | None,
        h0: torch.Tensor,
        c0: torch.Tensor,
        weight_hh: torch.Tensor,
        gain_hh: torch.Tensor,
        cell_weight: torch.Tensor,
        cell_bias: torch.Tensor | None,
        weight_hr: torch.Tensor | None,
        eps: float,
        reverse: bool,
        variant: str,
        grad: bool,
        recurrent_mask: torch.Tensor | None = None,
        zone_h: torch.Tensor | float | None = None,
        zone_c: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = (x, weight_ih, gain_ih, shift, h0, c0, weight_hh, gain_hh, cell_weight, cell_bias, weight_hr)
        masks = (recurrent_mask, zoneout_argument(zone_h, x), zoneout_argument(zone_c, x))
        return _forward(ctx, inputs, eps, reverse, variant, grad, masks)  # type: ignore[no-any-return]

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_out: torch.Tensor, grad_hn: torch.Tensor, grad_cn: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grads = _backward(ctx, (grad_out, grad_hn, grad_cn))
        need = ctx.needs_input_grad
        return tuple(g if n else None for g, n in zip(grads, need, strict=False)) + (None,) * 7
