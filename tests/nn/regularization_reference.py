"""A plain re-implementation of our LSTM / GRU with the regularisers, one sequence and one step at a time.

Shares no code with ``rnn_stability.nn`` beyond the masks it is given (``draw_masks``' ``LayerMasks``, batch rows
in the layer's order: a packed sequence's sorted order). Layer norm ``None``, ``"recurrent"`` or ``"joint"``;
batch norm of ``W_ih x`` over every valid step of every sequence (training statistics); zoneout either 0/1
masks or, in eval, its probability.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tests.nn.naive_reference import EPS, _norm

__all__ = ["regularized_reference"]


def _step(
    module: nn.RNNBase, suffix: str, xp: Tensor, h: Tensor, c: Tensor | None, h_rec: Tensor, w_hh: Tensor
) -> tuple[Tensor, Tensor | None]:
    """One step for one sample from its input projection ``xp`` (``W_ih x``, batch-normalised if on)."""
    lstm = c is not None
    gates = 4 if lstm else 3
    ln = module.layer_norm_variant
    zero = torch.zeros(module.hidden_size, dtype=xp.dtype)
    b_ih, b_hh = getattr(module, f"bias_ih{suffix}", None), getattr(module, f"bias_hh{suffix}", None)
    bx = list(b_ih.chunk(gates)) if b_ih is not None else [zero] * gates
    bh = list(b_hh.chunk(gates)) if b_hh is not None else [zero] * gates
    xs, hs = list(xp.chunk(gates)), list((w_hh @ h_rec).chunk(gates))
    gain = None
    if ln == "recurrent":
        g_hh = getattr(module, f"layer_norm_hh{suffix}").weight
        hs = [_norm(hs[k], g_hh[k]) for k in range(gates)]
    elif ln == "joint":
        gain = getattr(module, f"layer_norm_gates{suffix}").weight
    if not lstm:
        if gain is None:
            r = torch.sigmoid(xs[0] + bx[0] + hs[0] + bh[0])
            z = torch.sigmoid(xs[1] + bx[1] + hs[1] + bh[1])
            n = torch.tanh(xs[2] + bx[2] + r * (hs[2] + bh[2]))
        else:
            r = torch.sigmoid(_norm(xs[0] + hs[0], gain[0]) + bx[0] + bh[0])
            z = torch.sigmoid(_norm(xs[1] + hs[1], gain[1]) + bx[1] + bh[1])
            n = torch.tanh(_norm(xs[2] + r * hs[2], gain[2]) + bx[2] + r * bh[2])
        return (1 - z) * n + z * h, None
    if gain is None:
        pre = [xs[k] + bx[k] + hs[k] + bh[k] for k in range(4)]
    else:
        pre = [_norm(xs[k] + hs[k], gain[k]) + bx[k] + bh[k] for k in range(4)]
    i, f, g, o = torch.sigmoid(pre[0]), torch.sigmoid(pre[1]), torch.tanh(pre[2]), torch.sigmoid(pre[3])
    c_new = f * c + i * g
    if ln is not None:
        cell = getattr(module, f"layer_norm_cell{suffix}")
        c_read = _norm(c_new, cell.weight, cell.bias)
    else:
        c_read = c_new
    h_new = o * torch.tanh(c_read)
    w_hr = getattr(module, f"weight_hr{suffix}", None)
    return (h_new if w_hr is None else w_hr @ h_new), c_new


def _batch_norm(module: nn.RNNBase, suffix: str, projections: list[Tensor]) -> list[Tensor]:
    norm = getattr(module, f"batch_norm_ih{suffix}", None)
    if norm is None:
        return projections
    rows = torch.cat(projections, 0)
    if module.training:
        mean, var = rows.mean(0), rows.var(0, unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    return [(p - mean) / torch.sqrt(var + EPS) * norm.weight + norm.bias for p in projections]


def regularized_reference(
    module: nn.RNNBase,
    sequences: list[Tensor],
    positions: list[int],
    masks: list,
    state: tuple[Tensor, ...] | None = None,
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Run ``module``'s formula on each ``(T_b, input_size)`` sequence with the given masks.

    ``positions[b]`` is sequence ``b``'s row in the masks (its place in the sorted batch); zoneout masks are
    rows of the packed time-major layout. Returns per-sequence outputs and final states ``(L * D, B, ·)``.
    """
    lstm = isinstance(module, nn.LSTM)
    dirs = 2 if module.bidirectional else 1
    width = module.proj_size or module.hidden_size
    lengths = [len(s) for s in sequences]
    steps = max(lengths)
    sizes = [sum(1 for n in lengths if n > t) for t in range(steps)]
    offsets = [sum(sizes[:t]) for t in range(steps)]
    p_h, p_c = module.zoneout
    xs = list(sequences)
    finals: list[list[list[Tensor]]] = [[[] for _ in range(2 if lstm else 1)] for _ in sequences]
    for layer in range(module.num_layers):
        m_in = masks[layer * dirs].input
        inputs = [x if m_in is None else x * m_in[positions[b]] for b, x in enumerate(xs)]
        outs: list[list[Tensor]] = [[] for _ in sequences]
        for d in range(dirs):
            idx, suffix = layer * dirs + d, f"_l{layer}" + ("_reverse" if d else "")
            m = masks[idx]
            w_hh = getattr(module, f"weight_hh{suffix}")
            w_hh = w_hh if m.weight_hh is None else w_hh * m.weight_hh
            w_ih = getattr(module, f"weight_ih{suffix}")
            projections = _batch_norm(module, suffix, [x @ w_ih.t() for x in inputs])
            for b, proj in enumerate(projections):
                pos = positions[b]
                if state is None:
                    h = torch.zeros(width, dtype=proj.dtype)
                    c = torch.zeros(module.hidden_size, dtype=proj.dtype) if lstm else None
                else:
                    h, c = state[0][idx, b], (state[1][idx, b] if lstm else None)
                hs: dict[int, Tensor] = {}
                order = range(lengths[b] - 1, -1, -1) if d else range(lengths[b])
                for t in order:
                    h_rec = h if m.recurrent is None else h * m.recurrent[pos]
                    h_new, c_new = _step(module, suffix, proj[t], h, c, h_rec, w_hh)
                    row = offsets[t] + pos
                    keep_h = p_h if m.zone_h is None else m.zone_h[row].to(h.dtype)
                    h = keep_h * h + (1 - keep_h) * h_new
                    if c is not None and c_new is not None:
                        keep_c = p_c if m.zone_c is None else m.zone_c[row].to(c.dtype)
                        c = keep_c * c + (1 - keep_c) * c_new
                    hs[t] = h
                outs[b].append(torch.stack([hs[t] for t in range(lengths[b])]))
                finals[b][0].append(h)
                if c is not None:
                    finals[b][1].append(c)
        new = [torch.cat(o, -1) for o in outs]
        if module.residual and new[0].shape == xs[0].shape:
            new = [n + x for n, x in zip(new, xs, strict=True)]
        xs = new
    final = tuple(
        torch.stack([torch.stack(finals[b][k]) for b in range(len(sequences))], 1)
        for k in range(len(finals[0]))
    )
    return xs, final
