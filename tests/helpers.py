"""Tiny models and Trainer settings shared by the tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.data import adding_problem


class TinyRNNRegressor(L.LightningModule):
    """A recurrent layer and a linear head trained with MSE on the adding problem.

    Args:
        rnn: the recurrent module (``batch_first=True``); defaults to a 1-layer ``torch.nn.LSTM``.
        hidden_size: hidden width of the default LSTM.
        lr: Adam learning rate.
    """

    def __init__(self, rnn: nn.Module | None = None, hidden_size: int = 8, lr: float = 1e-2) -> None:
        super().__init__()
        self.rnn = rnn if rnn is not None else nn.LSTM(2, hidden_size, batch_first=True)
        out_features = getattr(self.rnn, "proj_size", 0) or self.rnn.hidden_size
        if getattr(self.rnn, "bidirectional", False):
            out_features *= 2
        self.head = nn.Linear(out_features, 1)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def adding_loader(num_samples: int = 64, seq_len: int = 12, batch_size: int = 8, seed: int = 0) -> DataLoader:
    """A deterministic (unshuffled) DataLoader over adding-problem data."""
    x, y = adding_problem(num_samples, seq_len, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def quiet_trainer(tmp_path: Any = None, **kwargs: Any) -> L.Trainer:
    """A CPU Trainer with progress bar, model summary and checkpointing off unless asked for."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=4,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path) if tmp_path is not None else None,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)
