"""Temporal gradient flow: the norm of ∂L/∂x_t at every time step t of a recurrent module's input.

The gradient of the loss with respect to the input at time `t` has travelled back through `T - 1 - t`
recurrent Jacobians, so its norm over batch and features, plotted against `t`, shows how far back in time
a recurrent network still receives learning signal (Bengio, Simard & Frasconi 1994, "Learning long-term
dependencies with gradient descent is difficult"; Pascanu, Mikolov & Bengio 2013, "On the difficulty of
training recurrent neural networks").

Two entry points share one per-time-step norm:

- `gradient_flow` runs one forward and backward pass and returns the profile, for plain loops and
  notebooks. It differentiates with `torch.autograd.grad` with respect to the input only, so the
  parameters' `.grad` are left untouched.
- `GradientFlowRecorder` hooks recurrent modules inside a larger model while it trains normally; the
  Lightning callback `rnn_stability.callbacks.GradientFlowMonitor` is a thin shell over it.

Norms are reduced and accumulated in float64 (float32 on MPS) on the gradients' device, so that even
exploding gradients do not overflow, and recording costs no host synchronisation; only reading `GradientFlowRecorder.profiles` back on the host does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["GradientFlowRecorder", "gradient_flow", "is_recurrent"]

_Recurrent = (nn.RNNBase, nn.RNNCellBase)


def is_recurrent(module: nn.Module) -> bool:
    """Whether `module` is a recurrent layer (`torch.nn.RNNBase`) or cell (`torch.nn.RNNCellBase`).

    Examples:
        >>> is_recurrent(nn.LSTM(2, 3)), is_recurrent(nn.GRUCell(2, 3)), is_recurrent(nn.Linear(2, 3))
        (True, True, False)
    """
    return isinstance(module, _Recurrent)


def _squared_norm(grad: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    # vector_norm squares without rescaling, so float32 overflows for norms above ~1e19 — reachable by an
    # exploding RNN — and half precision far sooner. Reduce in float64 (float32 on MPS, which has none):
    # it is one memory-bound pass over the gradient, on measuring steps only.
    wide = torch.float32 if grad.device.type == "mps" else torch.float64
    return torch.linalg.vector_norm(grad, dim=dim, dtype=wide).square()


def _time_step_squares(
    grad: Tensor,
    *,
    time_dim: int | None,
    packed: PackedSequence | None = None,
    per_sequence: bool = False,
) -> Tensor:
    """Sum of squares of `grad` over everything but time (and batch if `per_sequence`), in float64.

    `time_dim=None` means a single time step (cells): a 0-d result, or `(B,)` per sequence.
    `packed` gives the layout of a packed `grad` of shape `(sum of lengths, features)`; positions past
    a sequence's end hold no data and so contribute zero. Returns `(T,)` or `(B, T)`.
    """
    if packed is not None:
        rows = _squared_norm(grad, -1)
        batch_sizes = packed.batch_sizes
        steps = batch_sizes.numel()
        time_index = torch.repeat_interleave(torch.arange(steps), batch_sizes)
        if not per_sequence:
            out = rows.new_zeros(steps)
            return out.index_add_(0, time_index.to(rows.device), rows)
        offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
        position = torch.arange(rows.numel()) - offsets[time_index]
        if packed.sorted_indices is not None:
            position = packed.sorted_indices.cpu()[position]
        out = rows.new_zeros(int(batch_sizes[0]), steps)
        out[position.to(rows.device), time_index.to(rows.device)] = rows
        return out
    if time_dim is None:
        # a cell: (B, F) batched or (F,) unbatched, one time step
        if per_sequence:
            squares = _squared_norm(grad, -1)
            return squares.reshape(-1)
        return _squared_norm(grad)
    if grad.dim() == 2:  # unbatched (T, F)
        squares = _squared_norm(grad, -1)
        return squares.unsqueeze(0) if per_sequence else squares
    if per_sequence:
        squares = _squared_norm(grad, -1)
        return squares if time_dim == 1 else squares.transpose(0, 1)
    other = tuple(d for d in range(grad.dim()) if d != time_dim)
    return _squared_norm(grad, other)


def _resolve_batch_first(module: nn.Module, batch_first: bool | None) -> bool:
    if batch_first is not None:
        if not isinstance(batch_first, bool):
            raise TypeError(f"`batch_first` must be a bool or None, got {batch_first!r}.")
        return batch_first
    for sub in module.modules():
        if isinstance(sub, nn.RNNBase):
            return bool(sub.batch_first)
    raise ValueError(
        "`batch_first` must be given when `module` contains no torch.nn.RNNBase to read it from, got None."
    )


def gradient_flow(
    module: nn.Module,
    inputs: Tensor | PackedSequence,
    loss_fn: Callable[[Any], Tensor],
    *,
    batch_first: bool | None = None,
    per_sequence: bool = False,
) -> Tensor:
    """Norm of ∂L/∂x_t for every time step t, with `L = loss_fn(module(inputs))`.

    Runs one forward and one backward pass. The gradient is taken with `torch.autograd.grad` with respect
    to `inputs` only: the parameters' `.grad` attributes are neither created nor changed, so it is safe to
    call in the middle of a training loop. Norms are reduced in float64 (float32 on MPS), so half-precision
    and exploding gradients cannot overflow.

    Args:
        module: any module that takes `inputs` (a recurrent layer, or a whole model that contains one).
        inputs: floating-point sequences: `(T, B, F)`, `(B, T, F)` when batch first, unbatched `(T, F)`,
            or a `torch.nn.utils.rnn.PackedSequence`. For models that embed token ids, pass the
            recurrent layer and the embedded inputs, or use `GradientFlowRecorder`.
        loss_fn: maps the module's output to a scalar loss.
        batch_first: layout of 3-d `inputs`; `None` takes it from `module` or its first
            `torch.nn.RNNBase` submodule.
        per_sequence: return one profile per sequence, shape `(B, T)`, instead of the norm over the batch.

    Returns:
        The profile, of shape `(T,)` (or `(B, T)`), in float32 (float64 for float64 inputs). For packed
        inputs `T` is the longest length, and time steps past a sequence's end contribute zero.

    Raises:
        TypeError: if `inputs` is not a floating-point tensor or PackedSequence, or `loss_fn` is not
            callable.
        ValueError: if `inputs` is not 2-d or 3-d, `batch_first` cannot be determined, or the loss is not a
            scalar tensor.

    Examples:
        >>> import torch
        >>> rnn = nn.RNN(1, 1, nonlinearity="relu", bias=False, batch_first=True)
        >>> with torch.no_grad():
        ...     _ = rnn.weight_ih_l0.fill_(1.0), rnn.weight_hh_l0.fill_(0.5)
        >>> profile = gradient_flow(rnn, torch.ones(1, 4, 1), lambda out: out[0][:, -1].sum())
        >>> profile.tolist()
        [0.125, 0.25, 0.5, 1.0]
        >>> rnn.weight_hh_l0.grad is None
        True
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    data = inputs.data if isinstance(inputs, PackedSequence) else inputs
    if not isinstance(data, Tensor) or not data.is_floating_point():
        raise TypeError(
            "`inputs` must be a floating-point Tensor or PackedSequence, got "
            f"{getattr(data, 'dtype', type(data).__name__)}."
        )
    leaf = data.detach().requires_grad_()
    time_dim: int | None = None
    packed: PackedSequence | None = None
    if isinstance(inputs, PackedSequence):
        packed = inputs._replace(data=leaf)
        x: Tensor | PackedSequence = packed
    else:
        if data.dim() not in (2, 3):
            raise ValueError(
                f"`inputs` must be 2-d (T, F) or 3-d (T, B, F) / (B, T, F), got shape {tuple(data.shape)}."
            )
        time_dim = 0 if data.dim() == 2 else int(_resolve_batch_first(module, batch_first))
        x = leaf
    with torch.enable_grad():
        loss = loss_fn(module(x))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"`loss_fn` must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}."
            )
        (grad,) = torch.autograd.grad(loss.reshape(()), leaf, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(leaf)
    squares = _time_step_squares(grad, time_dim=time_dim, packed=packed, per_sequence=per_sequence)
    return squares.sqrt().to(torch.promote_types(data.dtype, torch.float32))


class GradientFlowRecorder:
    """Records ∂L/∂x_t (the `"input"` profile) and ∂L/∂y_t (the `"output"` profile) of recurrent modules.

    While attached, a forward pre-hook on each module swaps its input for a graph node of its own (a detached
    leaf that requires grad when the input does not — the gradient reaching the parameters is unchanged —
    or a `view_as` alias when it does, e.g. after an embedding, so that only the gradient flowing through
    the recurrence is seen), and a tensor hook adds the squared per-time-step norms to a float64 buffer on
    the gradient's device. A forward hook does the same for the output sequence `y` (for layers, the first
    element of the returned tuple; for cells, the new hidden state). The output profile is the gradient the
    loss injects at each step directly; the input profile is the one that has flowed through the recurrence.

    Layers (`torch.nn.RNNBase`) are read with their `batch_first` layout, unbatched 2-d inputs and
    PackedSequences; bidirectional layers give one norm per time step over both directions. A cell
    (`torch.nn.RNNCellBase`) is one time step per call: the n-th call after `next_pass` is step n.
    Squares add up over calls, passes and backward passes until `reset`, so several micro-batches
    give the norm of the gradient accumulated over them.

    Args:
        modules: the recurrent modules to watch, by name.

    Raises:
        TypeError: if `modules` is not a mapping of names to modules, or a module is not a
            `torch.nn.RNNBase` or `torch.nn.RNNCellBase`.

    Examples:
        >>> import torch
        >>> lstm = nn.LSTM(3, 4, batch_first=True)
        >>> recorder = GradientFlowRecorder({"lstm": lstm})
        >>> with recorder:
        ...     out, _ = lstm(torch.randn(2, 5, 3))
        >>> out[:, -1].sum().backward()
        >>> profiles = recorder.profiles()["lstm"]
        >>> profiles["input"].shape, profiles["output"].tolist()[:4]
        (torch.Size([5]), [0.0, 0.0, 0.0, 0.0])
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        if not isinstance(modules, Mapping):
            raise TypeError(
                "`modules` must be a mapping of names to recurrent modules, e.g. {'lstm': model.lstm}, got "
                f"{type(modules).__name__}."
            )
        for name, module in modules.items():
            if not is_recurrent(module):
                raise TypeError(
                    f"`modules[{name!r}]` must be a torch.nn.RNNBase or torch.nn.RNNCellBase, "
                    f"got {type(module).__name__}."
                )
        self.modules = dict(modules)
        self.scale: float = 1.0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._calls: dict[str, int] = {}
        # (module name, "input" | "output") -> list of (first time step, squares)
        self._parts: dict[tuple[str, str], list[tuple[int, Tensor]]] = {}

    @property
    def attached(self) -> bool:
        """Whether the module hooks are registered."""
        return bool(self._handles)

    def attach(self) -> None:
        """Register the module hooks (no-op when already attached)."""
        if self._handles:
            return
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook(name)))

    def detach(self) -> None:
        """Remove the module hooks; tensor hooks already placed still record during the pending backward."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def next_pass(self) -> None:
        """Start a new forward pass: cells count their time steps from 0 again."""
        self._calls.clear()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._parts.clear()
        self._calls.clear()

    def __enter__(self) -> GradientFlowRecorder:
        self.next_pass()
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def profiles(self) -> dict[str, dict[str, Tensor]]:
        """The recorded profiles `{module name: {"input": (T,), "output": (T,)}}` (float32, on device).

        Kinds that received no gradient (for example an output sequence the loss does not use) are absent.
        """
        result: dict[str, dict[str, Tensor]] = {}
        for (name, kind), parts in self._parts.items():
            length = max(start + part.numel() for start, part in parts)
            total = parts[0][1].new_zeros(length)
            for start, part in parts:
                total[start : start + part.numel()] += part.reshape(-1)
            result.setdefault(name, {})[kind] = total.sqrt().float()
        return result

    def _layout(self, module: nn.Module, name: str, x: Tensor | PackedSequence) -> tuple[int, dict[str, Any]]:
        if isinstance(module, nn.RNNCellBase):
            step = self._calls.get(name, 0)
            return step, {"time_dim": None}
        if isinstance(x, PackedSequence):
            return 0, {"time_dim": None, "packed": x}
        return 0, {"time_dim": 0 if x.dim() == 2 or not module.batch_first else 1}

    def _watch(self, tensor: Tensor, key: tuple[str, str], start: int, layout: dict[str, Any]) -> None:
        def hook(grad: Tensor) -> None:
            squares = _time_step_squares(grad, **layout)
            if self.scale != 1.0:
                squares = squares / (self.scale * self.scale)
            self._parts.setdefault(key, []).append((start, squares))

        tensor.register_hook(hook)

    def _pre_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if not torch.is_grad_enabled():
                return None
            from_kwargs = not args and "input" in kwargs
            x = kwargs["input"] if from_kwargs else (args[0] if args else None)
            data = x.data if isinstance(x, PackedSequence) else x
            if not isinstance(data, Tensor) or not data.is_floating_point():
                return None
            alias = data.view_as(data) if data.requires_grad else data.detach().requires_grad_()
            new_x = x._replace(data=alias) if isinstance(x, PackedSequence) else alias
            start, layout = self._layout(module, name, new_x)
            self._watch(alias, (name, "input"), start, layout)
            if from_kwargs:
                return args, {**kwargs, "input": new_x}
            return (new_x, *args[1:]), kwargs

        return hook

    def _post_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not torch.is_grad_enabled():
                return
            y = output[0] if isinstance(output, tuple) and not isinstance(output, PackedSequence) else output
            data = y.data if isinstance(y, PackedSequence) else y
            if isinstance(data, Tensor) and data.requires_grad:
                start, layout = self._layout(module, name, y)
                self._watch(data, (name, "output"), start, layout)
            if isinstance(module, nn.RNNCellBase):
                self._calls[name] = self._calls.get(name, 0) + 1

        return hook
