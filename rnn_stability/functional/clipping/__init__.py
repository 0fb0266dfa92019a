"""Gradient clipping: by norm and value, adaptive strategies (AutoClip, ZClip, AGC), non-finite guard.

Every function here is usable from a plain PyTorch loop. One rule, `uses_host_scalars`, picks the path:
CPU: host scalars (the norm is read, gradients are rescaled only when clipped); CUDA/MPS/XLA: no host sync
(thresholds are 0-d tensors and clipping is a multiplication by a factor computed with `torch.where`).
"""

from rnn_stability.functional.clipping.agc import adaptive_grad_clip_, matches_any, unitwise_norm
from rnn_stability.functional.clipping.host_scalars import force_sync_free, uses_host_scalars
from rnn_stability.functional.clipping.nonfinite import (
    any_across_ranks,
    discard_grads_,
    nonfinite_parameter_names,
)
from rnn_stability.functional.clipping.norm import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_
from rnn_stability.functional.clipping.percentile import AutoClip, PercentileClipper
from rnn_stability.functional.clipping.zscore import ZClip, ZScoreClipper

__all__ = [
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
    "force_sync_free",
    "matches_any",
    "nonfinite_parameter_names",
    "unitwise_norm",
    "uses_host_scalars",
]
