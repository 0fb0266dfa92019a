"""Lightning callbacks, one per file, each a thin shell over `rnn_stability.functional`."""

from rnn_stability.callbacks.adaptive_gradient_clipping import AdaptiveGradientClipping
from rnn_stability.callbacks.clip_record import ClipRecord
from rnn_stability.callbacks.flow_plots import plot_flow_heatmap, plot_flow_profile
from rnn_stability.callbacks.gradient_flow_monitor import GradientFlowMonitor
from rnn_stability.callbacks.gradient_norm_monitor import GradientNormMonitor
from rnn_stability.callbacks.loss_spike_recovery import LossSpikeRecovery
from rnn_stability.callbacks.rnn_initializer import RNNInitializer
from rnn_stability.callbacks.stable_rnn import StableRNN

__all__ = [
    "AdaptiveGradientClipping",
    "ClipRecord",
    "GradientFlowMonitor",
    "GradientNormMonitor",
    "LossSpikeRecovery",
    "RNNInitializer",
    "StableRNN",
    "plot_flow_heatmap",
    "plot_flow_profile",
]
