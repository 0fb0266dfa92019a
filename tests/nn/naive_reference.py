"""A deliberately plain re-implementation of our LSTM / GRU formulas, one sequence and one step at a time.

It shares no code with ``rnn_stability.nn``: every gate block is normalised on its own by a hand-written formula,
each sequence of a batch is run separately over its own length, and layers are stacked by hand. Tests compare
the modules against it. ``layer_norm`` is what is normalised: ``None`` (off), ``"recurrent"`` (``W_hh h`` per gate
block), ``"joint"`` (``W_ih x + W_hh h`` per gate block; for the GRU's candidate ``W_in x + r * W_hn h``) or
``"separate"`` (``W_ih x`` and ``W_hh h`` on their own) or ``"scaled"`` (as ``"separate"``, the normalised ``W_ih x``
times the mean absolute value of ``x``); the LSTM's cell read-out is normalised in all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["reference_cell_step", "reference_forward"]

EPS = 1e-5


def _norm(x: Tensor, gain: Tensor | None, shift: Tensor | None = None) -> Tensor:
    """Layer norm of a 1-D vector written out by hand, then the affine map."""
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    y = (x - mean) / torch.sqrt(var + EPS)
    if gain is not None:
        y = y * gain
    if shift is not None:
        y = y + shift
    return y


def _blocks(v: Tensor, gains: Tensor | None, num_gates: int) -> list[Tensor]:
    """Split a fused projection into gate blocks, normalising each when ``gains`` is given."""
    chunks = list(v.chunk(num_gates))
    if gains is None:
        return chunks
    return [_norm(chunk, gains[k]) for k, chunk in enumerate(chunks)]


def reference_cell_step(
    mode: str,
    x: Tensor,
    state: tuple[Tensor, ...],
    params: dict[str, Tensor | None],
    layer_norm: str | None,
) -> tuple[Tensor, ...]:
    """One step for one sample (1-D tensors).

    ``params`` keys: w_ih, w_hh, b_ih, b_hh, w_hr, g_ih, g_hh, g_gates (the joint gain), g_c, b_c.
    """
    w_ih, w_hh = params["w_ih"], params["w_hh"]
    assert w_ih is not None and w_hh is not None
    num_gates = 4 if mode == "LSTM" else 3
    hidden = w_hh.shape[0] // num_gates
    b_ih, b_hh = params["b_ih"], params["b_hh"]
    zero = torch.zeros(hidden, dtype=x.dtype)
    bx = list(b_ih.chunk(num_gates)) if b_ih is not None else [zero] * num_gates
    bh = list(b_hh.chunk(num_gates)) if b_hh is not None else [zero] * num_gates
    if layer_norm == "joint":
        return _joint_step(mode, x, state, params, bx, bh)
    gx = _blocks(w_ih @ x, params["g_ih"] if layer_norm in ("separate", "scaled") else None, num_gates)
    if layer_norm == "scaled":
        gx = [block * x.abs().mean() for block in gx]
    gh = _blocks(w_hh @ state[0], params["g_hh"] if layer_norm else None, num_gates)
    ax = [gx[k] + bx[k] for k in range(num_gates)]
    ah = [gh[k] + bh[k] for k in range(num_gates)]
    if mode == "GRU":
        r = torch.sigmoid(ax[0] + ah[0])
        z = torch.sigmoid(ax[1] + ah[1])
        n = torch.tanh(ax[2] + r * ah[2])
        return ((1 - z) * n + z * state[0],)
    pre = [ax[k] + ah[k] for k in range(4)]
    return _lstm_update(pre, state, params, layer_norm is not None)


def _joint_step(
    mode: str,
    x: Tensor,
    state: tuple[Tensor, ...],
    params: dict[str, Tensor | None],
    bx: list[Tensor],
    bh: list[Tensor],
) -> tuple[Tensor, ...]:
    """The joint variant: each gate block of the summed projections is normalised (GRU: after the reset)."""
    w_ih, w_hh, gain = params["w_ih"], params["w_hh"], params["g_gates"]
    assert w_ih is not None and w_hh is not None and gain is not None
    num_gates = 4 if mode == "LSTM" else 3
    xs, hs = list((w_ih @ x).chunk(num_gates)), list((w_hh @ state[0]).chunk(num_gates))
    if mode == "GRU":
        r = torch.sigmoid(_norm(xs[0] + hs[0], gain[0]) + bx[0] + bh[0])
        z = torch.sigmoid(_norm(xs[1] + hs[1], gain[1]) + bx[1] + bh[1])
        n = torch.tanh(_norm(xs[2] + r * hs[2], gain[2]) + bx[2] + r * bh[2])
        return ((1 - z) * n + z * state[0],)
    pre = [_norm(xs[k] + hs[k], gain[k]) + bx[k] + bh[k] for k in range(4)]
    return _lstm_update(pre, state, params, True)


def _lstm_update(
    pre: list[Tensor], state: tuple[Tensor, ...], params: dict[str, Tensor | None], layer_norm: bool
) -> tuple[Tensor, Tensor]:
    i, f, g, o = torch.sigmoid(pre[0]), torch.sigmoid(pre[1]), torch.tanh(pre[2]), torch.sigmoid(pre[3])
    c = f * state[1] + i * g
    read = _norm(c, params["g_c"], params["b_c"]) if layer_norm else c
    h = o * torch.tanh(read)
    if params["w_hr"] is not None:
        h = params["w_hr"] @ h
    return h, c


def _params(module: nn.Module, suffix: str) -> dict[str, Tensor | None]:
    def get(name: str) -> Tensor | None:
        return getattr(module, name, None)

    return {
        "w_ih": get(f"weight_ih{suffix}"),
        "w_hh": get(f"weight_hh{suffix}"),
        "b_ih": get(f"bias_ih{suffix}"),
        "b_hh": get(f"bias_hh{suffix}"),
        "w_hr": get(f"weight_hr{suffix}"),
        "g_ih": _sub(module, f"layer_norm_ih{suffix}", "weight")
        if hasattr(module, f"layer_norm_ih{suffix}")
        else _sub(module, f"layer_norm_input{suffix}", "weight"),
        "g_hh": _sub(module, f"layer_norm_hh{suffix}", "weight"),
        "g_gates": _sub(module, f"layer_norm_gates{suffix}", "weight"),
        "g_c": _sub(module, f"layer_norm_cell{suffix}", "weight"),
        "b_c": _sub(module, f"layer_norm_cell{suffix}", "bias"),
    }


def _sub(module: nn.Module, child: str, name: str) -> Tensor | None:
    sub = getattr(module, child, None)
    return None if sub is None else getattr(sub, name)


def reference_forward(
    module: nn.Module, sequences: list[Tensor], state: tuple[Tensor, ...] | None = None
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Run ``module``'s formula on each ``(T_i, input_size)`` sequence; eval mode (no dropout).

    Returns the per-sequence outputs ``(T_i, D * out)`` and the final states ``(L * D, B, ·)``.
    """
    mode = "LSTM" if isinstance(module, nn.LSTM) else "GRU"
    layer_norm = getattr(module, "layer_norm_variant", None)
    residual = bool(getattr(module, "residual", False))
    dirs = 2 if module.bidirectional else 1
    out_size = module.proj_size or module.hidden_size
    outputs: list[Tensor] = []
    finals: list[list[list[Tensor]]] = []  # [sample][state index] -> per layer*dir
    for b, seq in enumerate(sequences):
        x_seq = list(seq.unbind(0))
        sample_finals: list[list[Tensor]] = [[] for _ in range(2 if mode == "LSTM" else 1)]
        for layer in range(module.num_layers):
            dir_outputs = []
            for d in range(dirs):
                idx = layer * dirs + d
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                params = _params(module, suffix)
                if state is None:
                    st: tuple[Tensor, ...] = (torch.zeros(out_size, dtype=seq.dtype),)
                    if mode == "LSTM":
                        st = st + (torch.zeros(module.hidden_size, dtype=seq.dtype),)
                else:
                    st = tuple(s[idx, b] for s in state)
                order = range(len(x_seq) - 1, -1, -1) if d else range(len(x_seq))
                hs: dict[int, Tensor] = {}
                for t in order:
                    st = reference_cell_step(mode, x_seq[t], st, params, layer_norm)
                    hs[t] = st[0]
                dir_outputs.append([hs[t] for t in range(len(x_seq))])
                for k, s in enumerate(st):
                    sample_finals[k].append(s)
            new_x = [torch.cat([dir_outputs[d][t] for d in range(dirs)]) for t in range(len(x_seq))]
            if residual and new_x[0].shape == x_seq[0].shape:
                new_x = [n + o for n, o in zip(new_x, x_seq, strict=True)]
            x_seq = new_x
        outputs.append(torch.stack(x_seq))
        finals.append(sample_finals)
    final_states = tuple(
        torch.stack([torch.stack(finals[b][k]) for b in range(len(sequences))], 1)
        for k in range(len(finals[0]))
    )
    return outputs, final_states
