"""neuralforecast: an LSTM with our layer-normalised encoder and our callbacks, saved and loaded back.

Run from the repository root: .venv/bin/python examples/forecasting_libraries/neuralforecast_lstm.py
(writes the folders stable_nf/ and logs/ into the current directory).
"""

# --8<-- [start:neuralforecast]
import numpy as np
import pandas as pd
from neuralforecast import NeuralForecast
from neuralforecast.utils import AirPassengersDF  # ships with the package
from pytorch_lightning.loggers import CSVLogger  # neuralforecast's Lightning

from rnn_stability.callbacks import GradientNormMonitor
from rnn_stability.integrations.neuralforecast import (
    StableLSTM,
    fitted_callbacks,
)

model = StableLSTM(
    h=12,
    input_size=24,
    encoder_hidden_size=32,
    max_steps=30,
    scaler_type="robust",
    random_seed=0,
    stable_rnn={
        "layer_norm": True
    },  # convert_rnn's options; None: torch's computation, bit for bit
    callbacks=[
        GradientNormMonitor()
    ],  # this and the rest go to the Lightning Trainer
    accelerator="cpu",
    log_every_n_steps=5,
    enable_progress_bar=False,
    enable_model_summary=False,
    logger=CSVLogger("logs", name="stable_lstm"),
)
nf = NeuralForecast(models=[model], freq="MS")
nf.fit(AirPassengersDF)
# fit trained deep copies of the models, callbacks and logger included:
# the ones that ran are the copies'
(monitor,) = fitted_callbacks(nf, GradientNormMonitor)
log_dir = nf.models[0].trainer_kwargs["logger"].log_dir
metrics = (
    pd.read_csv(f"{log_dir}/metrics.csv").ffill().iloc[-1].to_dict()
)  # train_loss_step, grad_norm/...
forecast = nf.predict()

nf.save(
    "stable_nf", overwrite=True
)  # StableLSTM is registered for NeuralForecast.load on import
loaded = NeuralForecast.load("stable_nf")
assert np.array_equal(
    loaded.predict()["StableLSTM"].values, forecast["StableLSTM"].values
)
# --8<-- [end:neuralforecast]

logged = sorted(
    key for key in metrics if key.startswith(("grad_norm/", "grad_clip/"))
)
print(
    f"train_loss {float(metrics['train_loss_step']):.2f}; our callbacks logged {len(logged)} metrics, e.g. {logged[0]}"
)
print("reloaded model forecasts the same 12 months")
