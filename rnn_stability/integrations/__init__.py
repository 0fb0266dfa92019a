"""Adapters for libraries that build the LightningModule for you, and rebuild it when loading a saved model.

The `StableRNN` callback converts a model when training starts, which is all a run needs. Loading a saved
model is different: darts (`RNNModel.load`), pytorch-forecasting (`load_from_checkpoint`) and
neuralforecast (`NeuralForecast.load`) build a fresh model from its class and hyper-parameters, with
torch's LSTM/GRU, before the weights go in. The model classes here convert in their constructor, from a
`stable_rnn` argument kept among the hyper-parameters, so the loaded model is the trained one.

Each library has its own module, which imports that library (install with `pip install
"rnn-stability[integrations]"`); importing this package imports none of them:

- `rnn_stability.integrations.darts`: `StableRNNModel`, `StableBlockRNNModel`, `allow_safe_loading`.
- `rnn_stability.integrations.neuralforecast`: `StableLSTM`, `StableGRU` (registered for
  `NeuralForecast.load`), `fitted_callbacks`.
- `rnn_stability.integrations.pytorch_forecasting`: `StableRecurrentNetwork`, `StableDeepAR`.

`StableRNNMixin` does the same for any LightningModule of your own.
"""

from rnn_stability.integrations.stable_rnn_mixin import StableRNNMixin

__all__ = ["StableRNNMixin"]
