"""neuralforecast: `LSTM` / `GRU` whose recurrent encoder is ours, surviving `NeuralForecast.save` / `load`.

`NeuralForecast.load` rebuilds each model from its hyper-parameters through a table of known classes
(`neuralforecast.core.MODEL_FILENAME_DICT`); a model whose RNN was swapped after construction comes back as
torch's module without its layer-norm weights. `StableLSTM` and `StableGRU` convert in their constructor
from `stable_rnn` (kept among the hyper-parameters) and are registered in that table when this module is
imported. `NeuralForecast.fit` trains deep copies of the models, callbacks included: `fitted_callbacks`
returns the callbacks that actually ran.
"""

from __future__ import annotations

from typing import Any

from neuralforecast import NeuralForecast
from neuralforecast.models import GRU, LSTM

from rnn_stability.integrations.stable_rnn_mixin import StableRNNMixin

__all__ = ["StableGRU", "StableLSTM", "fitted_callbacks", "register"]


class StableLSTM(StableRNNMixin, LSTM):
    """neuralforecast's `LSTM` with our LSTM encoder: `StableLSTM(h=12, ..., stable_rnn={"layer_norm": True})`."""


class StableGRU(StableRNNMixin, GRU):
    """neuralforecast's `GRU` with our GRU encoder: `StableGRU(h=12, ..., stable_rnn={"layer_norm": True})`."""


def register(*classes: type) -> None:
    """Make `NeuralForecast.save` / `load` know model classes by name (done for ours on import).

    Args:
        *classes: model classes, e.g. your own subclass of `StableRNNMixin` and a neuralforecast model;
            none: `StableLSTM` and `StableGRU`.
    """
    from neuralforecast.core import MODEL_FILENAME_DICT

    for cls in classes or (StableLSTM, StableGRU):
        MODEL_FILENAME_DICT[cls.__name__.lower()] = cls


def fitted_callbacks(nf: NeuralForecast, cls: type | None = None) -> list[Any]:
    """The callbacks that ran in `nf.fit`: deep copies of the ones the models were built with.

    Args:
        nf: a fitted `NeuralForecast`.
        cls: only callbacks of this class (e.g. `GradientNormMonitor`); `None`: all.

    Returns:
        The callbacks of every fitted model, in the order of `nf.models`.
    """
    found = [cb for model in nf.models for cb in model.trainer_kwargs.get("callbacks") or []]
    return [cb for cb in found if cls is None or isinstance(cb, cls)]


register()
