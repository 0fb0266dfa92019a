"""Yearly sunspot numbers (1700-2008, shipped with statsmodels): a GRU forecaster vs a seasonal baseline.

The model reads the last ``window`` years and predicts the next one. It is scored on the years after
``split_year`` with torchmetrics' MAE and MAPE, next to the naive seasonal forecast "same as one solar cycle
(``season`` = 11 years) ago" measured on the same years.

Run from the repository root::

    python examples/sunspots_forecasting/train.py fit --config examples/sunspots_forecasting/config.yaml
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import ArgsType, LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanAbsoluteError, MeanAbsolutePercentageError

from rnn_stability.demo.models import Implementation, build_rnn
from rnn_stability.nn.layer_norm import LayerNormVariant

__all__ = ["load_sunspots", "SunspotsDataModule", "SunspotForecaster", "main"]


def load_sunspots() -> tuple[Tensor, Tensor]:
    """Years and yearly mean sunspot numbers from :mod:`statsmodels.datasets.sunspots` (no download)."""
    from statsmodels.datasets import sunspots

    frame = sunspots.load_pandas().data
    years = torch.tensor(frame["YEAR"].to_numpy(), dtype=torch.int64)
    return years, torch.tensor(frame["SUNACTIVITY"].to_numpy(), dtype=torch.float32)


class SunspotsDataModule(L.LightningDataModule):
    """Sliding windows over the sunspot series, split by the year of the predicted value.

    Inputs are standardised with the mean and standard deviation of the training years; targets stay in
    sunspot units. Each validation sample also carries the seasonal-naive forecast of its target.

    Args:
        window: years the model sees before predicting the next one.
        split_year: targets up to this year train, later ones validate.
        season: lag of the naive seasonal baseline (the ~11-year solar cycle).
        batch_size: windows per batch.
    """

    def __init__(
        self, window: int = 22, split_year: int = 1950, season: int = 11, batch_size: int = 32
    ) -> None:
        super().__init__()
        if window < season:
            raise ValueError(f"`window` must be >= `season` ({season}) for the baseline, got {window}.")
        self.window, self.split_year, self.season, self.batch_size = window, split_year, season, batch_size
        years, values = load_sunspots()
        train_end = int((years <= split_year).sum())
        if not window < train_end < len(values):
            raise ValueError(f"`split_year` must leave data on both sides, got {split_year}.")
        self.mean = float(values[:train_end].mean())
        self.std = float(values[:train_end].std())
        normalised = (values - self.mean) / self.std
        windows = normalised.unfold(0, window, 1)[:-1].unsqueeze(
            -1
        )  # (N, window, 1), window i ends before i+window
        targets = values[window:].unsqueeze(-1)
        naive = values[window - season : len(values) - season].unsqueeze(-1)
        split = train_end - window
        self.train_set = TensorDataset(windows[:split], targets[:split], naive[:split])
        self.val_set = TensorDataset(windows[split:], targets[split:], naive[split:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=len(self.val_set))


class SunspotForecaster(L.LightningModule):
    """A recurrent layer and a linear head predicting next year's sunspot number.

    Logs ``train_mse`` (standardised units), ``val_mae`` and ``val_mape`` (torchmetrics, sunspot units), and
    ``baseline_mae`` / ``baseline_mape`` of the seasonal-naive forecast on the same years.

    Args:
        cell: ``"gru"`` or ``"lstm"``.
        hidden_size: hidden width.
        num_layers: stacked layers.
        implementation: ``"torch"`` or ``"rnn_stability"``.
        layer_norm: layer-normalised recurrence (``implementation="rnn_stability"`` only).
        lr: Adam learning rate.
    """

    def __init__(
        self,
        cell: str = "gru",
        hidden_size: int = 32,
        num_layers: int = 1,
        implementation: Implementation = "rnn_stability",
        layer_norm: bool | LayerNormVariant = "joint",
        lr: float = 1e-2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rnn = build_rnn(
            cell, 1, hidden_size, num_layers=num_layers, implementation=implementation, layer_norm=layer_norm
        )
        self.head = nn.Linear(hidden_size, 1)
        self.lr = lr
        self.mean, self.std = 0.0, 1.0
        self.val_mae, self.val_mape = MeanAbsoluteError(), MeanAbsolutePercentageError()
        self.baseline_mae, self.baseline_mape = MeanAbsoluteError(), MeanAbsolutePercentageError()

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule  # type: ignore[attr-defined]
        self.mean, self.std = data.mean, data.std

    def forward(self, windows: Tensor) -> Tensor:
        """Predicted sunspot number (original units) after each window."""
        out, _ = self.rnn(windows)
        return self.head(out[:, -1]) * self.std + self.mean

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        windows, targets, _ = batch
        loss = nn.functional.mse_loss(
            (self(windows) - self.mean) / self.std, (targets - self.mean) / self.std
        )
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        windows, targets, naive = batch
        self.val_mae(self(windows), targets)
        self.val_mape(self(windows), targets)
        self.baseline_mae(naive, targets)
        self.baseline_mape(naive, targets)
        self.log("val_mae", self.val_mae, prog_bar=True)
        self.log("val_mape", self.val_mape)
        self.log("baseline_mae", self.baseline_mae, prog_bar=True)
        self.log("baseline_mape", self.baseline_mape)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(args: ArgsType = None) -> LightningCLI:
    """Runs the LightningCLI; ``args`` replaces the command line (used by the smoke tests)."""
    return LightningCLI(
        SunspotForecaster, SunspotsDataModule, args=args, save_config_kwargs={"overwrite": True}
    )


if __name__ == "__main__":
    main()
