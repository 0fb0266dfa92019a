"""Drop-in replacements for `torch.nn.LSTM` / `GRU` / `LSTMCell` / `GRUCell`."""

from rnn_stability.nn.cells import GRUCell, LSTMCell
from rnn_stability.nn.convert import convert_rnn
from rnn_stability.nn.gru import GRU
from rnn_stability.nn.layer_norm import GateLayerNorm, gate_layer_norm
from rnn_stability.nn.lstm import LSTM

__all__: list[str] = [
    "GRU",
    "GRUCell",
    "GateLayerNorm",
    "LSTM",
    "LSTMCell",
    "convert_rnn",
    "gate_layer_norm",
]
