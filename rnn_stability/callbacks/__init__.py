"""Lightning callbacks, one per file, each a thin shell over :mod:`rnn_stability.functional`."""

# --- issue 4 ---
from rnn_stability.callbacks.adaptive_gradient_clipping import AdaptiveGradientClipping
from rnn_stability.callbacks.clip_record import ClipRecord
from rnn_stability.callbacks.gradient_norm_monitor import GradientNormMonitor

# isort: split

# --- issue 5 ---
from rnn_stability.callbacks.rnn_initializer import RNNInitializer

# isort: split

# --- issue 6 ---
from rnn_stability.callbacks.flow_plots import plot_flow_heatmap, plot_flow_profile
from rnn_stability.callbacks.gradient_flow_monitor import GradientFlowMonitor

__all__: list[str] = [
    # issue 4 (clipping)
    "AdaptiveGradientClipping",
    "ClipRecord",
    # issue 4 (monitor)
    "GradientNormMonitor",
    # issue 5
    "RNNInitializer",
    # issue 6
    "GradientFlowMonitor",
    "plot_flow_heatmap",
    "plot_flow_profile",
]
