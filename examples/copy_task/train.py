"""Copy (memory) task (Arjovsky, Shah & Bengio 2016) with LightningCLI: vanilla vs stable configs.

The network reads `copy_len` symbols, waits `delay` steps, sees a delimiter and must then write the
symbols back. Outputting blanks and then guessing uniformly gives the memoryless baseline cross-entropy
`copy_len * ln(num_symbols) / (delay + 2 * copy_len)`; a model that remembers goes well below it.
`num_symbols` and `copy_len` are set once, on the data (`--data.*`), and passed on to the model.

Run from the repository root (after `make test` or `make demo`):

    .venv/bin/python examples/copy_task/train.py fit --config examples/copy_task/vanilla.yaml
    .venv/bin/python examples/copy_task/train.py fit --config examples/copy_task/stable.yaml
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import ArgsType, LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from rnn_stability.data import copy_task
from rnn_stability.demo.models import Implementation, build_rnn

__all__ = ["CopyTaskCLI", "CopyTaskStream", "CopyTaskDataModule", "CopyTaskModel", "main"]


class CopyTaskStream(IterableDataset):
    """An endless, seeded stream of copy-task batches (each batch new)."""

    def __init__(self, delay: int, batch_size: int, num_symbols: int, copy_len: int, seed: int) -> None:
        super().__init__()
        self.delay, self.batch_size, self.num_symbols, self.copy_len, self.seed = (
            delay,
            batch_size,
            num_symbols,
            copy_len,
            seed,
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield copy_task(
                self.batch_size,
                self.delay,
                num_symbols=self.num_symbols,
                copy_len=self.copy_len,
                generator=generator,
            )


class CopyTaskDataModule(L.LightningDataModule):
    """Training stream and fixed validation set of the copy task.

    Args:
        delay: steps between the last symbol and the delimiter (`T` in Arjovsky et al.).
        batch_size: sequences per batch.
        num_symbols: alphabet size of the symbols to copy.
        copy_len: number of symbols to remember.
        num_val_samples: size of the validation set.
        seed: seed of the training stream (validation uses `seed + 1`).
    """

    def __init__(
        self,
        delay: int = 100,
        batch_size: int = 64,
        num_symbols: int = 8,
        copy_len: int = 10,
        num_val_samples: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed + 1)
        # Generating the validation set here also validates the arguments (copy_task checks them).
        self.val_set = TensorDataset(
            *copy_task(
                num_val_samples, delay, num_symbols=num_symbols, copy_len=copy_len, generator=generator
            )
        )
        self.stream = CopyTaskStream(delay, batch_size, num_symbols, copy_len, seed)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class CopyTaskModel(L.LightningModule):
    """One-hot input, a recurrent layer and a per-step linear classifier, trained with cross-entropy.

    Logs `train_ce`, `val_ce`, `val_recall_acc` (accuracy on the symbols to recall) and
    `baseline_ce` (the memoryless baseline of the sequences validated on, whatever their delay).

    Args:
        cell: `"lstm"` or `"gru"`.
        hidden_size: hidden width.
        num_layers: stacked layers.
        implementation: `"torch"` or `"rnn_stability"`.
        layer_norm: layer-normalised recurrence (`implementation="rnn_stability"` only).
        num_symbols: alphabet size (linked to `data.num_symbols` on the command line).
        copy_len: symbols to remember (linked to `data.copy_len` on the command line).
        lr: Adam learning rate.
    """

    def __init__(
        self,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        implementation: Implementation = "torch",
        layer_norm: bool = False,
        num_symbols: int = 8,
        copy_len: int = 10,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_inputs = num_symbols + 2
        self.rnn = build_rnn(
            cell,
            self.num_inputs,
            hidden_size,
            num_layers=num_layers,
            implementation=implementation,
            layer_norm=layer_norm,
        )
        self.head = nn.Linear(hidden_size, num_symbols + 1)
        self.copy_len = copy_len
        self.num_symbols = num_symbols
        self.lr = lr

    def baseline_ce(self, seq_len: int) -> float:
        """Memoryless cross-entropy on sequences of `seq_len = delay + 2 * copy_len` steps."""
        return self.copy_len * math.log(self.num_symbols) / seq_len

    def forward(self, tokens: Tensor) -> Tensor:
        x = nn.functional.one_hot(tokens, self.num_inputs).float()
        out, _ = self.rnn(x)
        return self.head(out)

    def _loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        tokens, targets = batch
        logits = self(tokens)
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()), logits, targets

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train_ce", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, targets = self._loss(batch)
        recall = logits[:, -self.copy_len :].argmax(-1) == targets[:, -self.copy_len :]
        self.log("val_ce", loss, prog_bar=True)
        self.log("val_recall_acc", recall.float().mean())
        self.log("baseline_ce", self.baseline_ce(targets.size(1)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class CopyTaskCLI(LightningCLI):
    """LightningCLI whose model takes the alphabet size and copy length from the data."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.num_symbols", "model.num_symbols")
        parser.link_arguments("data.copy_len", "model.copy_len")


def main(args: ArgsType = None) -> LightningCLI:
    """Runs the LightningCLI; `args` replaces the command line (used by the smoke tests)."""
    return CopyTaskCLI(CopyTaskModel, CopyTaskDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
