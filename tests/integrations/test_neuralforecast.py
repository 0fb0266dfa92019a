"""neuralforecast (imports `pytorch_lightning`): our callbacks and `StableLSTM` / `StableGRU` for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("neuralforecast", reason="neuralforecast is in the `integrations` extra")

from neuralforecast import NeuralForecast  # noqa: E402
from neuralforecast.models import GRU, LSTM  # noqa: E402

from rnn_stability.callbacks import GradientNormMonitor, StableRNN  # noqa: E402
from rnn_stability.integrations.neuralforecast import StableGRU, StableLSTM, fitted_callbacks  # noqa: E402
from rnn_stability.nn import GRU as OurGRU  # noqa: E402
from rnn_stability.nn import LSTM as OurLSTM  # noqa: E402
from tests.integrations.library_runs import LastMetrics, monthly_values, quiet  # noqa: E402

DATA = pd.DataFrame(
    {"unique_id": "a", "ds": pd.date_range("2000-01-01", periods=60, freq="MS"), "y": monthly_values(60)}
)


def fit_predict(
    cls: type, callbacks: list[Any], **kwargs: Any
) -> tuple[NeuralForecast, np.ndarray, dict[str, Any]]:
    """The fitted models, the 3-step forecast and the metrics logged in `fit` (`predict` builds a new Trainer)."""
    model = cls(
        h=3, input_size=8, encoder_hidden_size=8, decoder_hidden_size=8, max_steps=5, batch_size=4,
        random_seed=0, callbacks=[*callbacks, LastMetrics()], accelerator="cpu", logger=False, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip
    nf = NeuralForecast(models=[model], freq="MS")
    with quiet():
        nf.fit(DATA)
        (probe,) = fitted_callbacks(nf, LastMetrics)  # fit ran a deep copy of the one passed in
        metrics = probe.metrics
        return nf, nf.predict().iloc[:, -1].to_numpy(), metrics


@pytest.mark.parametrize(
    ("plain_cls", "stable_cls", "ours"), [(LSTM, StableLSTM, OurLSTM), (GRU, StableGRU, OurGRU)]
)
def test_options_off_swap_gives_bit_identical_predictions(
    plain_cls: type, stable_cls: type, ours: type
) -> None:
    _, plain, _ = fit_predict(plain_cls, [])
    swapped, by_callback, _ = fit_predict(plain_cls, [StableRNN()])
    adapted, by_class, _ = fit_predict(stable_cls, [])
    assert type(swapped.models[0].hist_encoder) is type(adapted.models[0].hist_encoder) is ours
    np.testing.assert_array_equal(by_callback, plain)
    np.testing.assert_array_equal(by_class, plain)


def test_layer_norm_trains_logs_and_survives_save_and_load(tmp_path: Path) -> None:
    passed = [StableRNN(layer_norm=True), GradientNormMonitor(log_every_n_steps=1)]
    nf, predicted, metrics = fit_predict(StableGRU, passed, stable_rnn={"layer_norm": True})
    model = nf.models[0]
    assert model.hist_encoder.layer_norm
    # fit trained deep copies: the callbacks passed in never ran, fitted_callbacks finds those that did
    live = fitted_callbacks(nf)
    assert [type(cb) for cb in live] == [StableRNN, GradientNormMonitor, LastMetrics] and live[
        0
    ] is not passed[0]
    assert passed[0].converted == [] and live[0].converted == ["hist_encoder"]
    assert fitted_callbacks(nf, GradientNormMonitor) == [live[1]]
    assert np.isfinite(float(metrics["train_loss"]))
    assert any(key.startswith("grad_norm/hist_encoder") for key in metrics)

    nf.save(str(tmp_path / "nf"), overwrite=True)
    with quiet():
        loaded = NeuralForecast.load(str(tmp_path / "nf"))
        again = loaded.predict().iloc[:, -1].to_numpy()
    assert type(loaded.models[0]) is StableGRU and loaded.models[0].hist_encoder.layer_norm
    np.testing.assert_array_equal(again, predicted)
