"""pytorch-forecasting: DeepAR with our layer-normalised LSTM and our callbacks, checkpointed and loaded back.

Run from the repository root: .venv/bin/python examples/forecasting_libraries/pytorch_forecasting_deepar.py
(writes stable_deepar.ckpt into the current directory).
"""

# --8<-- [start:pf]
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TimeSeriesDataSet

from rnn_stability.callbacks import (
    AdaptiveGradientClipping,
    GradientNormMonitor,
)
from rnn_stability.integrations.pytorch_forecasting import StableDeepAR

# Two monthly series: trend, yearly cycle, noise.
t = np.arange(144)
rng = np.random.default_rng(0)
data = pd.DataFrame(
    {
        "series": np.repeat(["a", "b"], t.size),
        "time_idx": np.tile(t, 2),
        "value": np.concatenate(
            [
                1 + t / 144 + 0.3 * np.sin(2 * np.pi * t / 12 + phase)
                for phase in (0, 1)
            ]
        )
        + rng.normal(0.0, 0.05, 2 * t.size),
    }
)
dataset = TimeSeriesDataSet(
    data,
    time_idx="time_idx",
    target="value",
    group_ids=["series"],
    max_encoder_length=24,
    max_prediction_length=12,
    time_varying_unknown_reals=["value"],
)
pl.seed_everything(0)
model = StableDeepAR.from_dataset(
    dataset,
    hidden_size=16,
    rnn_layers=1,
    cell_type="LSTM",
    stable_rnn={"layer_norm": True},
)
trainer = pl.Trainer(
    accelerator="cpu",
    max_steps=30,
    callbacks=[GradientNormMonitor(), AdaptiveGradientClipping()],
    log_every_n_steps=5,  # our callbacks log at the Trainer's interval
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
)
trainer.fit(
    model, dataset.to_dataloader(train=True, batch_size=32, num_workers=0)
)
metrics = dict(
    trainer.callback_metrics
)  # train_loss, grad_norm/..., grad_clip/...
trainer.save_checkpoint("stable_deepar.ckpt")

test_data = dataset.to_dataloader(train=False, batch_size=64, num_workers=0)
torch.manual_seed(0)  # DeepAR's forecast is the mean of sampled paths
forecast = model.predict(test_data)
loaded = StableDeepAR.load_from_checkpoint(
    "stable_deepar.ckpt"
)  # rebuilt with our LSTM
torch.manual_seed(0)
assert torch.equal(loaded.predict(test_data), forecast)
# --8<-- [end:pf]

logged = sorted(
    key for key in metrics if key.startswith(("grad_norm/", "grad_clip/"))
)
print(
    f"train_loss {float(metrics['train_loss']):.4f}; our callbacks logged {len(logged)} metrics, e.g. {logged[0]}"
)
print("reloaded model forecasts the same 12 months")
