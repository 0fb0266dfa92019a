"""darts: an RNNModel with our layer-normalised LSTM and our callbacks, saved and loaded back.

Run from the repository root: .venv/bin/python examples/forecasting_libraries/darts_rnn.py
(writes stable_lstm.pt* into the current directory).
"""

# --8<-- [start:darts]
import numpy as np
from darts import TimeSeries

from rnn_stability.callbacks import (
    AdaptiveGradientClipping,
    GradientNormMonitor,
)
from rnn_stability.integrations.darts import StableRNNModel, allow_safe_loading

# A monthly series: trend, yearly cycle, noise (darts' datasets download).
t = np.arange(144)
noise = np.random.default_rng(0).normal(0.0, 0.05, t.size)
series = TimeSeries.from_values(
    (1 + t / 144 + 0.3 * np.sin(2 * np.pi * t / 12) + noise).astype(np.float32)
)

model = StableRNNModel(
    input_chunk_length=24,
    model="LSTM",
    hidden_dim=16,
    training_length=36,
    n_epochs=20,
    optimizer_kwargs={"lr": 5e-3},
    random_state=0,
    stable_rnn={
        "layer_norm": True
    },  # convert_rnn's options; None: torch's computation, bit for bit
    pl_trainer_kwargs={
        "accelerator": "cpu",
        "callbacks": [GradientNormMonitor(), AdaptiveGradientClipping()],
        "log_every_n_steps": 5,  # our callbacks log at the Trainer's interval
        "enable_progress_bar": False,
    },
)
model.fit(series, verbose=False)
metrics = dict(
    model.trainer.callback_metrics
)  # train_loss, grad_norm/..., grad_clip/...
forecast = model.predict(12, verbose=False)

model.save("stable_lstm.pt")
# darts' safe loader: allow-list our model, module and callback classes
allow_safe_loading()
loaded = StableRNNModel.load("stable_lstm.pt")
assert np.array_equal(
    loaded.predict(12, verbose=False).values(), forecast.values()
)
# --8<-- [end:darts]

logged = sorted(
    key for key in metrics if key.startswith(("grad_norm/", "grad_clip/"))
)
print(
    f"train_loss {float(metrics['train_loss']):.4f}; our callbacks logged {len(logged)} metrics, e.g. {logged[0]}"
)
print("reloaded model forecasts the same 12 months")
