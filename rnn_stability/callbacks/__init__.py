"""Lightning callbacks, one per file, each a thin shell over :mod:`rnn_stability.functional`."""

# --- issue 4 ---

# --- issue 5 ---

# --- issue 6 ---

__all__: list[str] = []
