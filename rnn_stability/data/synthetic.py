"""Generators for the classic synthetic long-range memory tasks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adding_problem", "copy_task"]


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def adding_problem(
    num_samples: int, seq_len: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997).

    Each sequence has two channels: a value drawn from U[0, 1] and a marker that is 1 at exactly two
    positions (one in each half of the sequence) and 0 elsewhere. The target is the sum of the two
    marked values. Predicting the mean (1.0) gives an MSE of 1/6 ≈ 0.167; the task counts as solved
    below an MSE of 0.01.

    Args:
        num_samples: number of sequences.
        seq_len: sequence length `T` (at least 2).
        generator: optional random generator, for reproducible data.

    Returns:
        `inputs` of shape `(num_samples, seq_len, 2)` and `targets` of shape `(num_samples, 1)`.

    Examples:
        >>> x, y = adding_problem(4, 10, generator=torch.Generator().manual_seed(0))
        >>> x.shape, y.shape
        (torch.Size([4, 10, 2]), torch.Size([4, 1]))
        >>> bool(torch.allclose((x[..., 0] * x[..., 1]).sum(1, keepdim=True), y))
        True
    """
    _check_positive("num_samples", num_samples)
    _check_positive("seq_len", seq_len, minimum=2)
    values = torch.rand(num_samples, seq_len, generator=generator)
    half = seq_len // 2
    first = torch.randint(0, half, (num_samples,), generator=generator)
    second = torch.randint(half, seq_len, (num_samples,), generator=generator)
    markers = torch.zeros(num_samples, seq_len)
    rows = torch.arange(num_samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    inputs = torch.stack([values, markers], dim=-1)
    targets = (values * markers).sum(dim=1, keepdim=True)
    return inputs, targets


def copy_task(
    num_samples: int,
    delay: int,
    *,
    num_symbols: int = 8,
    copy_len: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The copy (memory) task (Arjovsky, Shah & Bengio 2016).

    A sequence of `copy_len` symbols from `1..num_symbols` is followed by `delay - 1` blanks (0), a
    delimiter (`num_symbols + 1`) and `copy_len` more blanks; the model must output blanks until the
    delimiter and then reproduce the symbols. The memoryless baseline cross-entropy is
    `copy_len * ln(num_symbols) / (delay + 2 * copy_len)`.

    Args:
        num_samples: number of sequences.
        delay: number of steps `T` between the end of the symbols and the start of the recall.
        num_symbols: alphabet size of the data symbols.
        copy_len: number of symbols to remember.
        generator: optional random generator.

    Returns:
        `inputs` of shape `(num_samples, delay + 2 * copy_len)` (int64 token ids in
        `0..num_symbols + 1`) and `targets` of the same shape (ids in `0..num_symbols`).

    Examples:
        >>> x, y = copy_task(2, delay=5, copy_len=3, generator=torch.Generator().manual_seed(0))
        >>> x.shape == y.shape == (2, 11)
        True
        >>> bool((y[:, -3:] == x[:, :3]).all())
        True
    """
    _check_positive("num_samples", num_samples)
    _check_positive("delay", delay)
    _check_positive("num_symbols", num_symbols)
    _check_positive("copy_len", copy_len)
    total = delay + 2 * copy_len
    symbols = torch.randint(1, num_symbols + 1, (num_samples, copy_len), generator=generator)
    inputs = torch.zeros(num_samples, total, dtype=torch.int64)
    inputs[:, :copy_len] = symbols
    inputs[:, copy_len + delay - 1] = num_symbols + 1
    targets = torch.zeros(num_samples, total, dtype=torch.int64)
    targets[:, -copy_len:] = symbols
    return inputs, targets
