"""Pure tensor functions: gradient norms, clipping strategies, gate-aware initialisation, gradient flow.

Nothing in this package imports Lightning; the callbacks in :mod:`rnn_stability.callbacks` are thin
shells over these functions, and each is usable from a plain PyTorch training loop.
"""

# --- gradient norms (issue 4) ---
from rnn_stability.functional.grad_norm import (
    foreach_norms,
    grad_norms,
    nonfinite_count,
    total_grad_norm,
    total_norm,
)
from rnn_stability.functional.norm_groups import group_norms, group_parameters, update_to_weight_ratio

# --- clipping strategies (issue 4) ---
# isort: split
from rnn_stability.functional.clipping import (
    AutoClip,
    PercentileClipper,
    ZClip,
    ZScoreClipper,
    adaptive_grad_clip_,
    any_across_ranks,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    discard_grads_,
    nonfinite_parameter_names,
)

# --- gate-aware initialisation (issue 5) ---
# isort: split
from rnn_stability.functional.init import (
    chrono_,
    forget_gate_bias_,
    identity_,
    init_rnn_,
    orthogonal_,
    xavier_normal_,
    xavier_uniform_,
)

# --- temporal gradient flow (issue 6) ---
# isort: split
from rnn_stability.functional.flow_statistics import FlowStatistics, flow_statistics
from rnn_stability.functional.gradient_flow import GradientFlowRecorder, gradient_flow

__all__ = [
    "foreach_norms",
    "grad_norms",
    "nonfinite_count",
    "total_grad_norm",
    "total_norm",
    "group_norms",
    "group_parameters",
    "update_to_weight_ratio",
    # issue 4: clipping
    "AutoClip",
    "PercentileClipper",
    "ZClip",
    "ZScoreClipper",
    "adaptive_grad_clip_",
    "any_across_ranks",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "discard_grads_",
    "nonfinite_parameter_names",
    # issue 5
    "chrono_",
    "forget_gate_bias_",
    "identity_",
    "init_rnn_",
    "orthogonal_",
    "xavier_normal_",
    "xavier_uniform_",
    # issue 6
    "FlowStatistics",
    "GradientFlowRecorder",
    "flow_statistics",
    "gradient_flow",
]
