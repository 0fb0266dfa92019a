"""A recurrent regressor for the adding problem, built from torch's or this library's LSTM/GRU."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from rnn_stability.nn.layer_norm import LayerNormVariant

__all__ = ["build_rnn", "SequenceRegressor"]

Implementation = Literal["torch", "rnn_stability"]


def build_rnn(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    implementation: str = "torch",
    layer_norm: bool | LayerNormVariant = False,
) -> nn.RNNBase:
    """A batch-first LSTM or GRU from `torch.nn` or from `rnn_stability.nn`.

    Args:
        cell: `"lstm"` or `"gru"`.
        input_size: features per time step.
        hidden_size: hidden width.
        num_layers: stacked layers.
        implementation: `"torch"` (`torch.nn.LSTM`/`GRU`) or `"rnn_stability"` (the drop-ins of
            `rnn_stability.nn`, which accept `layer_norm`).
        layer_norm: layer-normalised recurrence (Ba, Kiros & Hinton 2016): `True` or a variant name
            (`"separate"`, `"joint"`, `"recurrent"`; see `rnn_stability.nn.LSTM`); needs
            `implementation="rnn_stability"`.

    Raises:
        ValueError: for an unknown `cell` or `implementation`, or `layer_norm` with torch's modules.

    Examples:
        >>> build_rnn("gru", 2, 8)
        GRU(2, 8, batch_first=True)
    """
    if cell not in ("lstm", "gru"):
        raise ValueError(f"`cell` must be 'lstm' or 'gru', got {cell!r}.")
    if implementation == "torch":
        if layer_norm:
            raise ValueError("`layer_norm=True` needs `implementation='rnn_stability'`.")
        torch_cls = nn.LSTM if cell == "lstm" else nn.GRU
        return torch_cls(input_size, hidden_size, num_layers=num_layers, batch_first=True)
    if implementation == "rnn_stability":
        from rnn_stability.nn import GRU, LSTM

        ours = LSTM if cell == "lstm" else GRU
        module: nn.RNNBase = ours(
            input_size, hidden_size, num_layers=num_layers, batch_first=True, layer_norm=layer_norm
        )
        return module
    raise ValueError(f"`implementation` must be 'torch' or 'rnn_stability', got {implementation!r}.")


class SequenceRegressor(L.LightningModule):
    """A recurrent layer whose last hidden state feeds a linear head, trained with MSE and Adam.

    Logs `train_mse` every logging step and `val_mse` per validation epoch.

    Args:
        cell: `"lstm"` or `"gru"`.
        input_size: features per time step (2 for the adding problem).
        hidden_size: hidden width.
        num_layers: stacked recurrent layers.
        implementation: `"torch"` or `"rnn_stability"`, see `build_rnn`.
        layer_norm: layer-normalised recurrence (needs `implementation="rnn_stability"`).
        lr: Adam learning rate.

    Examples:
        >>> model = SequenceRegressor(hidden_size=8)
        >>> model(torch.zeros(3, 5, 2)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        cell: str = "lstm",
        input_size: int = 2,
        hidden_size: int = 64,
        num_layers: int = 1,
        implementation: Implementation = "torch",
        layer_norm: bool = False,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"`lr` must be a positive float, got {lr!r}.")
        self.save_hyperparameters()
        self.rnn = build_rnn(
            cell,
            input_size,
            hidden_size,
            num_layers=num_layers,
            implementation=implementation,
            layer_norm=layer_norm,
        )
        self.head = nn.Linear(hidden_size, 1)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_mse", nn.functional.mse_loss(self(x), y), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
