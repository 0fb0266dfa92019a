"""pytest set-up for the whole repository (doctest collection of the package included)."""

# The library adapters hold no doctests, and importing darts / neuralforecast / pytorch-forecasting costs
# ~15 s in each xdist worker; tests/integrations imports them where they are tested.
collect_ignore = [
    "rnn_stability/integrations/darts.py",
    "rnn_stability/integrations/neuralforecast.py",
    "rnn_stability/integrations/pytorch_forecasting.py",
]
