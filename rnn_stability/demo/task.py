"""The adding problem as a Lightning data module: a fresh, seeded stream of training batches."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from rnn_stability.data import adding_problem

__all__ = ["AddingProblemStream", "AddingProblemDataModule"]


def _check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


class AddingProblemStream(IterableDataset):
    """An endless stream of adding-problem batches (Hochreiter & Schmidhuber 1997).

    Every batch is new, so the model never sees the same sequence twice and the training loss is an
    unbiased estimate of the test loss. The stream restarts from `seed` each time it is iterated.

    Args:
        seq_len: sequence length `T` (at least 2).
        batch_size: sequences per batch.
        seed: seed of the stream's random generator.

    Examples:
        >>> x, y = next(iter(AddingProblemStream(seq_len=10, batch_size=4)))
        >>> x.shape, y.shape
        (torch.Size([4, 10, 2]), torch.Size([4, 1]))
    """

    def __init__(self, seq_len: int, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        _check_positive_int("seq_len", seq_len, minimum=2)
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("seed", seed, minimum=0)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield adding_problem(self.batch_size, self.seq_len, generator=generator)


class AddingProblemDataModule(L.LightningDataModule):
    """Training stream and fixed validation set of the adding problem.

    Predicting the mean target gives an MSE of 1/6 ≈ 0.167; the task counts as solved below 0.01.

    Args:
        seq_len: sequence length `T` (at least 2).
        batch_size: sequences per training and validation batch.
        num_val_samples: size of the fixed validation set.
        seed: seed of the training stream; the validation set uses `seed + 1`.

    Raises:
        ValueError: if an argument is out of range; the message names it.

    Examples:
        >>> dm = AddingProblemDataModule(seq_len=10, batch_size=4, num_val_samples=8)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, len(dm.val_dataloader())
        (torch.Size([4, 10, 2]), 2)
    """

    def __init__(
        self, seq_len: int = 100, batch_size: int = 50, num_val_samples: int = 1000, seed: int = 0
    ) -> None:
        super().__init__()
        _check_positive_int("num_val_samples", num_val_samples)
        self.train_stream = AddingProblemStream(seq_len, batch_size, seed)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_val_samples = num_val_samples
        self.seed = seed
        self._val: TensorDataset | None = None

    def val_dataset(self) -> TensorDataset:
        """The fixed validation set (generated once, from `seed + 1`)."""
        if self._val is None:
            generator = torch.Generator().manual_seed(self.seed + 1)
            self._val = TensorDataset(
                *adding_problem(self.num_val_samples, self.seq_len, generator=generator)
            )
        return self._val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size)
