"""pytorch-forecasting (imports `lightning.pytorch`): callbacks, `StableRecurrentNetwork` / `StableDeepAR`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("pytorch_forecasting", reason="pytorch-forecasting is in the `integrations` extra")

import lightning.pytorch as pl  # noqa: E402
from pytorch_forecasting import DeepAR, RecurrentNetwork, TimeSeriesDataSet  # noqa: E402

from rnn_stability.callbacks import AdaptiveGradientClipping, GradientNormMonitor, StableRNN  # noqa: E402
from rnn_stability.integrations.pytorch_forecasting import StableDeepAR, StableRecurrentNetwork  # noqa: E402
from rnn_stability.nn import LSTM  # noqa: E402
from tests.integrations.library_runs import monthly_values, quiet  # noqa: E402

DATASET = TimeSeriesDataSet(
    pd.DataFrame(
        {
            "series": np.repeat(["a", "b"], 48),
            "time_idx": np.tile(np.arange(48), 2),
            "value": np.concatenate([monthly_values(48), monthly_values(48, phase=1.0, seed=1)]),
        }
    ),
    time_idx="time_idx",
    target="value",
    group_ids=["series"],
    max_encoder_length=8,
    max_prediction_length=3,
    time_varying_unknown_reals=["value"],
)


def fit(model: pl.LightningModule, callbacks: list[Any], max_steps: int = 4) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, callbacks=callbacks, logger=False, log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with quiet():
        trainer.fit(model, DATASET.to_dataloader(train=True, batch_size=16, num_workers=0))
    return trainer


def predict(model: Any) -> torch.Tensor:
    torch.manual_seed(0)  # DeepAR samples its forecast
    with quiet():
        return model.predict(DATASET.to_dataloader(train=False, batch_size=16, num_workers=0))


@pytest.mark.parametrize(
    ("cls", "stable_cls"), [(RecurrentNetwork, StableRecurrentNetwork), (DeepAR, StableDeepAR)]
)
def test_options_off_swap_gives_bit_identical_predictions(cls: Any, stable_cls: Any) -> None:
    predictions, modules = [], []
    for model_cls, callbacks in [(cls, []), (cls, [StableRNN()]), (stable_cls, [])]:
        pl.seed_everything(0, verbose=False)
        model = model_cls.from_dataset(DATASET, hidden_size=8, rnn_layers=1)
        fit(model, callbacks)
        predictions.append(predict(model))
        modules.append(model.rnn)
    # their LSTM subclass keeps its own methods, with ours beneath
    assert isinstance(modules[1], LSTM) and hasattr(modules[1], "handle_no_encoding")
    assert type(modules[1]) is type(modules[2])
    assert torch.equal(predictions[1], predictions[0]) and torch.equal(predictions[2], predictions[0])


def test_layer_norm_trains_logs_and_survives_load_from_checkpoint(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = StableDeepAR.from_dataset(
        DATASET, hidden_size=8, rnn_layers=2, cell_type="GRU", stable_rnn={"layer_norm": True}
    )
    trainer = fit(model, [GradientNormMonitor(log_every_n_steps=1), AdaptiveGradientClipping()])
    assert model.rnn.layer_norm and model.hparams.stable_rnn == {"layer_norm": True}
    metrics = trainer.callback_metrics
    assert np.isfinite(float(metrics["train_loss"]))
    assert "grad_clip/threshold" in metrics and any(key.startswith("grad_norm/rnn") for key in metrics)

    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = StableDeepAR.load_from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.rnn.layer_norm and isinstance(loaded.rnn, type(model.rnn))
    assert torch.equal(predict(loaded), predict(model))
