"""The two training set-ups the demo compares: torch's defaults and this library's stable recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning as L

from rnn_stability.demo.config import DemoConfig
from rnn_stability.demo.models import SequenceRegressor

if TYPE_CHECKING:
    from rnn_stability.callbacks import AdaptiveGradientClipping, GradientFlowMonitor

__all__ = ["SETUP_NAMES", "Setup", "build_setup"]

#: Names of the set-ups, in display order.
SETUP_NAMES = ("vanilla", "stable")


@dataclass
class Setup:
    """A model with the callbacks that train it.

    Args:
        name: `"vanilla"` or `"stable"`.
        title: one line describing the recipe, shown in the progress bar and the table.
        model: the LightningModule to fit.
        callbacks: the callbacks passed to the Trainer (training-changing ones and pure monitors).
        flow_monitor: the gradient-flow monitor among `callbacks`.
        clipper: the clipping callback among `callbacks`, if any.
    """

    name: str
    title: str
    model: SequenceRegressor
    callbacks: list[L.Callback]
    flow_monitor: GradientFlowMonitor
    clipper: AdaptiveGradientClipping | None = None


def _monitors(config: DemoConfig) -> tuple[list[L.Callback], GradientFlowMonitor]:
    # Pure diagnostics: both set-ups get them so that the plots compare like with like; neither changes
    # the weights (tested in the callbacks' own test suites).
    from rnn_stability.callbacks import GradientFlowMonitor, GradientNormMonitor

    flow = GradientFlowMonitor(every_n_steps=config.flow_every_n_steps, save_plots=False)
    return [GradientNormMonitor(granularity="total"), flow], flow


def build_setup(name: str, config: DemoConfig) -> Setup:
    """Builds the `"vanilla"` or the `"stable"` set-up for `config`.

    * vanilla: `torch.nn.LSTM`/`GRU` with torch's default initialisation, no clipping.
    * stable: `rnn_stability.nn.LSTM`/`GRU` with `layer_norm=True` (Ba et al. 2016), chrono
      initialisation (Tallec & Ollivier 2018) through `rnn_stability.callbacks.RNNInitializer`,
      and `rnn_stability.callbacks.AdaptiveGradientClipping` (AutoClip, Seetharaman et al. 2020)
      with its non-finite-step guard.

    Both use the same data, seed, width, optimizer and learning rate, and both carry the two monitors
    (`rnn_stability.callbacks.GradientNormMonitor`,
    `rnn_stability.callbacks.GradientFlowMonitor`), which only observe.

    Args:
        name: one of `SETUP_NAMES`.
        config: the demo settings.

    Raises:
        ValueError: for an unknown `name`.

    Examples:
        >>> setup = build_setup("stable", DemoConfig(seq_len=20))
        >>> setup.title
        'rnn_stability.nn.LSTM(layer_norm=True), chrono init, AutoClip'
        >>> [type(cb).__name__ for cb in setup.callbacks]
        ['RNNInitializer', 'AdaptiveGradientClipping', 'GradientNormMonitor', 'GradientFlowMonitor']
    """
    common = dict(cell=config.cell, input_size=2, hidden_size=config.hidden_size, lr=config.lr)
    cell = config.cell.upper()
    if name == "vanilla":
        model = SequenceRegressor(implementation="torch", **common)  # type: ignore[arg-type]
        monitors, flow = _monitors(config)
        return Setup(name, f"torch.nn.{cell}, default init, no clipping", model, monitors, flow)
    if name == "stable":
        from rnn_stability.callbacks import AdaptiveGradientClipping, RNNInitializer

        model = SequenceRegressor(implementation="rnn_stability", layer_norm=True, **common)  # type: ignore[arg-type]
        clipper = AdaptiveGradientClipping(strategy="percentile", percentile=10.0, window_size=1000)
        monitors, flow = _monitors(config)
        callbacks: list[L.Callback] = [
            RNNInitializer(scheme="chrono", max_timescale=float(config.seq_len), seed=config.seed),
            clipper,
            *monitors,
        ]
        title = f"rnn_stability.nn.{cell}(layer_norm=True), chrono init, AutoClip"
        return Setup(name, title, model, callbacks, flow, clipper)
    raise ValueError(f"`name` must be one of {', '.join(SETUP_NAMES)}, got {name!r}.")
