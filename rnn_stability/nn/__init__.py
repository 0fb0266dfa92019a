"""Drop-in replacements for ``torch.nn.LSTM`` / ``GRU`` / ``LSTMCell`` / ``GRUCell``."""

__all__: list[str] = []
