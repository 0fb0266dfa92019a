"""What the Trainer step-time benchmarks share: the timed model, a per-step timer, data and arguments."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.data import adding_problem

RESULTS = Path(__file__).parent / "results"


class LSTMRegressor(L.LightningModule):
    """A torch ``nn.LSTM`` (2 inputs) and a linear head on the last step, trained with MSE and Adam."""

    def __init__(self, hidden_size: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out, _ = self.rnn(x)
        return nn.functional.mse_loss(self.head(out[:, -1]), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class StepTimer(Callback):
    """``(global_step, wall, process CPU)`` at the start of every step and at the end of training."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, float, float]] = []

    def _record(self, trainer: L.Trainer) -> None:
        self.starts.append((trainer.global_step, time.perf_counter(), time.process_time()))

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._record(trainer)


def step_time_parser(description: str, *, repeats: int, steps: int, output: str) -> argparse.ArgumentParser:
    """Arguments of a step-time benchmark: repeats, timed and warm-up steps, model and data sizes, output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=RESULTS / output)
    return parser


def parse_step_benchmark(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, DataLoader]:
    """Parse the arguments, use one intra-op thread, silence Lightning's advice, and build the data."""
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    return args, adding_loader(args)


def adding_loader(args: argparse.Namespace) -> DataLoader:
    """50 batches of adding-problem data of the benchmark's sizes, in a fixed order."""
    x, y = adding_problem(args.batch_size * 50, args.seq_len, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=False)
