"""rnn-stability: stable recurrent networks for PyTorch Lightning."""

__version__ = "0.1.0"
