"""Your own LightningModule: the StableRNN callback converts it, StableRNNMixin makes load_from_checkpoint agree.

Run from the repository root: .venv/bin/python examples/forecasting_libraries/own_lightning_module.py
(writes forecaster.ckpt into the current directory).
"""

# --8<-- [start:own]
import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.callbacks import GradientNormMonitor, StableRNN
from rnn_stability.integrations import StableRNNMixin


class Forecaster(
    pl.LightningModule
):  # an existing model, unchanged: torch's LSTM
    def __init__(self, hidden_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rnn = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


# Windows of a noisy sine wave: 24 steps in, the next value out.
t = torch.arange(600.0)
wave = torch.sin(t / 6) + 0.05 * torch.randn(
    t.shape, generator=torch.Generator().manual_seed(0)
)
windows = wave.unfold(0, 25, 1).unsqueeze(-1)
loader = DataLoader(
    TensorDataset(windows[:, :24], windows[:, 24]), batch_size=32, shuffle=True
)

# 1. Training only: a callback converts the model in `setup`, no code change.
pl.seed_everything(0)
model = Forecaster()
trainer = pl.Trainer(
    accelerator="cpu",
    max_epochs=2,
    callbacks=[StableRNN(layer_norm=True), GradientNormMonitor()],
    log_every_n_steps=10,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
)
trainer.fit(model, loader)
trainer.save_checkpoint("forecaster.ckpt")


# 2. Loading: `load_from_checkpoint` builds the class as written, with
#    torch's LSTM, and refuses the layer-norm weights. A subclass with
#    StableRNNMixin converts in its constructor, from `stable_rnn`.
class StableForecaster(StableRNNMixin, Forecaster):
    pass


loaded = StableForecaster.load_from_checkpoint(
    "forecaster.ckpt", stable_rnn={"layer_norm": True}
)
assert torch.equal(loaded(windows[:8, :24]), model(windows[:8, :24]))
# --8<-- [end:own]

print(
    f"train_loss {float(trainer.callback_metrics['train_loss']):.4f}; the loaded model predicts the same"
)
