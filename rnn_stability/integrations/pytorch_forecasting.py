"""pytorch-forecasting: `RecurrentNetwork` / `DeepAR` with our LSTM / GRU, surviving `load_from_checkpoint`.

Their LSTM / GRU are subclasses of torch's with methods of their own, which `convert_rnn` keeps (our
machinery goes beneath them). `load_from_checkpoint` rebuilds the model from its class and hyper-parameters:
these classes convert in their constructor from `stable_rnn`, which the hyper-parameters keep. Build them as
the originals: `StableRecurrentNetwork.from_dataset(dataset, ..., stable_rnn={"layer_norm": True})`.
"""

from __future__ import annotations

from pytorch_forecasting import DeepAR, RecurrentNetwork

from rnn_stability.integrations.stable_rnn_mixin import StableRNNMixin

__all__ = ["StableDeepAR", "StableRecurrentNetwork"]


class StableRecurrentNetwork(StableRNNMixin, RecurrentNetwork):
    """pytorch-forecasting's `RecurrentNetwork` with our LSTM / GRU (`stable_rnn={"layer_norm": True}`)."""


class StableDeepAR(StableRNNMixin, DeepAR):
    """pytorch-forecasting's `DeepAR` with our LSTM / GRU (`stable_rnn={"layer_norm": True}`)."""
