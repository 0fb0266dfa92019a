"""darts (imports `pytorch_lightning`): our callbacks and `StableRNNModel` / `StableBlockRNNModel` for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("darts", reason="darts is in the `integrations` extra")

from darts import TimeSeries  # noqa: E402
from darts.models import RNNModel  # noqa: E402
from darts.utils.serialization import clear_safe_globals, safe_globals  # noqa: E402

from rnn_stability.callbacks import AdaptiveGradientClipping, GradientNormMonitor, StableRNN  # noqa: E402
from rnn_stability.integrations.darts import (  # noqa: E402
    StableBlockRNNModel,
    StableRNNModel,
    StableRNNModule,
    allow_safe_loading,
)
from rnn_stability.nn import GRU, LSTM  # noqa: E402
from tests.integrations.library_runs import LastMetrics, monthly_values, quiet  # noqa: E402

SERIES = TimeSeries.from_values(monthly_values())


def trainer_kwargs(callbacks: list[Any]) -> dict[str, Any]:
    return {
        "accelerator": "cpu",
        "callbacks": callbacks,
        "logger": False,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }


def fit_predict(cls: type, callbacks: list[Any], **kwargs: Any) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """The fitted model, its 6-step forecast and the metrics logged in `fit` (`predict` builds a new Trainer)."""
    probe = LastMetrics()
    model = cls(
        input_chunk_length=8, hidden_dim=8, n_epochs=2, batch_size=16, random_state=0,
        pl_trainer_kwargs=trainer_kwargs([*callbacks, probe]), **kwargs,
    )  # fmt: skip
    with quiet():
        model.fit(SERIES, verbose=False)
        return model, model.predict(6, verbose=False).values(), probe.metrics


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_options_off_swap_gives_bit_identical_predictions(rnn: str) -> None:
    _, plain, _ = fit_predict(RNNModel, [], model=rnn, training_length=12)
    swapped, by_callback, _ = fit_predict(RNNModel, [StableRNN()], model=rnn, training_length=12)
    adapted, by_class, _ = fit_predict(StableRNNModel, [], model=rnn, training_length=12)
    assert type(swapped.model.rnn) is type(adapted.model.rnn) is {"LSTM": LSTM, "GRU": GRU}[rnn]
    np.testing.assert_array_equal(by_callback, plain)
    np.testing.assert_array_equal(by_class, plain)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (StableRNNModel, {"training_length": 12, "model": "LSTM"}),
        (StableBlockRNNModel, {"output_chunk_length": 3}),
    ],
)
def test_layer_norm_trains_logs_and_survives_save_and_load(
    tmp_path: Path, cls: type, kwargs: dict[str, Any]
) -> None:
    callbacks = [
        StableRNN(layer_norm=True),
        GradientNormMonitor(log_every_n_steps=1),
        AdaptiveGradientClipping(),
    ]
    model, predicted, metrics = fit_predict(cls, callbacks, stable_rnn={"layer_norm": True}, **kwargs)
    assert model.model.rnn.layer_norm and model.model.stable_rnn_converted == ["rnn"]
    assert np.isfinite(float(metrics["train_loss"]))
    assert "grad_clip/threshold" in metrics and any(key.startswith("grad_norm/rnn") for key in metrics)

    path = str(tmp_path / "model.pt")
    model.save(path)
    clear_safe_globals()
    with pytest.raises(Exception, match="not allow-listed"):
        cls.load(path)
    allow_safe_loading()
    allow_safe_loading()  # idempotent
    try:
        with quiet(), safe_globals([LastMetrics]):  # a class of ours in pl_trainer_kwargs: allow-listed too
            loaded = cls.load(path)
            again = loaded.predict(6, verbose=False).values()
    finally:
        clear_safe_globals()
    assert type(loaded.model).__name__ == type(model.model).__name__ and loaded.model.rnn.layer_norm
    np.testing.assert_array_equal(again, predicted)


@pytest.mark.parametrize("rnn", ["RNN", StableRNNModule])  # a module class: darts' custom-module path
def test_model_must_be_lstm_or_gru(rnn: Any) -> None:
    with pytest.raises(ValueError, match="'LSTM' or 'GRU'"):
        StableRNNModel(input_chunk_length=4, model=rnn)
