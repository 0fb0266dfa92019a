"""Drop-in replacements for ``torch.nn.LSTM`` / ``GRU`` / ``LSTMCell`` / ``GRUCell``."""

# issue 3: drop-in LSTM/GRU with layer-norm and residual options
from rnn_stability.nn.cells import GRUCell, LSTMCell
from rnn_stability.nn.convert import convert_rnn
from rnn_stability.nn.gru import GRU
from rnn_stability.nn.layer_norm import GateLayerNorm, gate_layer_norm
from rnn_stability.nn.lstm import LSTM

__all__: list[str] = [
    # issue 3
    "GRU",
    "GRUCell",
    "GateLayerNorm",
    "LSTM",
    "LSTMCell",
    "convert_rnn",
    "gate_layer_norm",
]
