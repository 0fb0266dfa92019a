"""A first Trainer with rnn-stability: model, data and callbacks in one file."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.callbacks import (
    AdaptiveGradientClipping,
    GradientFlowMonitor,
    GradientNormMonitor,
    RNNInitializer,
)
from rnn_stability.data import adding_problem
from rnn_stability.nn import LSTM

SEQ_LEN = 50


class Regressor(L.LightningModule):
    """An LSTM reads the sequence; a linear layer maps its last output to y."""

    def __init__(self, hidden_size: int = 32) -> None:
        super().__init__()
        self.rnn = LSTM(2, hidden_size, batch_first=True, layer_norm=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_mse", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


# The adding problem: x is (sequences, SEQ_LEN, 2), y is (sequences, 1).
x, y = adding_problem(2000, SEQ_LEN, generator=torch.Generator().manual_seed(0))
data = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True)

trainer = L.Trainer(
    max_epochs=15,  # 40 batches an epoch: 600 steps
    log_every_n_steps=20,
    logger=L.pytorch.loggers.CSVLogger("lightning_logs"),
    enable_checkpointing=False,
    callbacks=[
        # once, before the first step; never on resume
        RNNInitializer(scheme="chrono", max_timescale=SEQ_LEN),
        # AutoClip; steps with NaN/Inf gradients are skipped
        AdaptiveGradientClipping(strategy="percentile"),
        # grad_norm/... and grad_clip/... metrics
        GradientNormMonitor(),
        # grad_flow/<module>/memory_length, verdict; heatmaps
        GradientFlowMonitor(every_n_steps=50),
    ],
)
trainer.fit(Regressor(), train_dataloaders=data)
mse = trainer.callback_metrics["train_mse"].item()
print(f"final training MSE: {mse:.4f} (always predicting the mean: 0.167)")
