"""The scripts of examples/forecasting_libraries/ (also the snippets of docs/integrations.md) run as written."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from rnn_stability.nn import GRU, LSTM
from tests.examples.conftest import EXAMPLES
from tests.integrations.library_runs import isolated_library_run, quiet  # noqa: F401  (autouse fixture)

SCRIPTS = EXAMPLES / "forecasting_libraries"


def run_script(name: str) -> dict:
    """Run a script in `tmp_path` (isolated_library_run): the scripts save into the working directory."""
    with quiet():
        return runpy.run_path(str(SCRIPTS / name), run_name="__main__")


def test_darts_script(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("darts", reason="darts is in the `integrations` extra")
    ns = run_script("darts_rnn.py")
    assert isinstance(ns["loaded"].model.rnn, LSTM) and ns["loaded"].model.rnn.layer_norm
    assert np.isfinite(float(ns["metrics"]["train_loss"])) and ns["logged"]
    assert "reloaded model forecasts the same" in capsys.readouterr().out


def test_neuralforecast_script() -> None:
    pytest.importorskip("neuralforecast", reason="neuralforecast is in the `integrations` extra")
    ns = run_script("neuralforecast_lstm.py")
    assert isinstance(ns["loaded"].models[0].hist_encoder, LSTM)
    assert ns["monitor"] is not ns["model"].trainer_kwargs["callbacks"][0]  # the copy that ran
    assert np.isfinite(float(ns["metrics"]["train_loss_step"])) and ns["logged"]


def test_pytorch_forecasting_script() -> None:
    pytest.importorskip("pytorch_forecasting", reason="pytorch-forecasting is in the `integrations` extra")
    ns = run_script("pytorch_forecasting_deepar.py")
    assert isinstance(ns["loaded"].rnn, LSTM) and ns["loaded"].rnn.layer_norm
    assert np.isfinite(float(ns["metrics"]["train_loss"])) and ns["logged"]


def test_own_lightning_module_script(tmp_path: Path) -> None:
    ns = run_script("own_lightning_module.py")
    assert isinstance(ns["loaded"].rnn, LSTM) and not isinstance(ns["loaded"].rnn, GRU)
    assert torch.isfinite(ns["trainer"].callback_metrics["train_loss"])
    # without the mixin, loading refuses the layer-norm weights
    with pytest.raises(RuntimeError, match="layer_norm"):
        ns["Forecaster"].load_from_checkpoint(tmp_path / "forecaster.ckpt")
