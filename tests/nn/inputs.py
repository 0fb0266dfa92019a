"""Build matching inputs for our modules, torch's modules and the naive reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence

__all__ = ["Case", "flatten_output", "make_case"]


@dataclass
class Case:
    """One forward call: ``module(input, hx)`` and the same data as per-sequence tensors for the reference."""

    input: Tensor | PackedSequence
    hx: Any
    sequences: list[Tensor]
    state: tuple[Tensor, ...] | None
    leaves: list[Tensor]


def make_case(
    module: nn.RNNBase,
    *,
    batch: int,
    steps: int,
    packed: bool,
    with_h0: bool,
    unbatched: bool,
    seed: int = 0,
) -> Case:
    """Random float64 input (and optional initial state) for ``module``; all leaves require grad."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(module.parameters()).dtype
    batch = 1 if unbatched else batch
    lengths = [steps - (k % steps) if packed else steps for k in range(batch)]
    leaves = [torch.randn(n, module.input_size, generator=gen, dtype=dtype).requires_grad_() for n in lengths]
    sequences = list(leaves)
    if packed:
        inp: Tensor | PackedSequence = pack_sequence(sequences, enforce_sorted=False)
    elif unbatched:
        inp = sequences[0]
    else:
        inp = torch.stack(sequences, 0 if module.batch_first else 1)
    state: tuple[Tensor, ...] | None = None
    hx: Any = None
    if with_h0:
        layers = module.num_layers * (2 if module.bidirectional else 1)
        sizes = [module.proj_size or module.hidden_size]
        if isinstance(module, nn.LSTM):
            sizes.append(module.hidden_size)
        state = tuple(
            torch.randn(layers, batch, s, generator=gen, dtype=dtype).mul(0.5).requires_grad_() for s in sizes
        )
        leaves += list(state)
        given = tuple(s[:, 0] for s in state) if unbatched else state
        hx = given if isinstance(module, nn.LSTM) else given[0]
    return Case(inp, hx, sequences, state, leaves)


def flatten_output(output: Any, case: Case, batch_first: bool) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Per-sequence outputs and ``(L*D, B, ·)`` final states of a module call, comparable to the reference."""
    out, state = output
    state = state if isinstance(state, tuple) else (state,)
    lengths = [len(s) for s in case.sequences]
    if isinstance(out, PackedSequence):
        padded, _ = pad_packed_sequence(out, batch_first=True)
        per_seq = [padded[b, :n] for b, n in enumerate(lengths)]
    elif out.dim() == 2:
        per_seq = [out]
        state = tuple(s.unsqueeze(1) for s in state)
    else:
        per_seq = list(out.unbind(0 if batch_first else 1))
    return per_seq, state
