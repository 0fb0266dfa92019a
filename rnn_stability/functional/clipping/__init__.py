"""Gradient clipping: by norm and value, adaptive strategies (AutoClip, ZClip, AGC), non-finite guard.

Every function here is usable from a plain PyTorch loop and avoids host synchronisation: thresholds are
0-d tensors and clipping is a multiplication by a factor computed with `torch.where`.
"""

from rnn_stability.functional.clipping.agc import adaptive_grad_clip_, matches_any, unitwise_norm
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
    "matches_any",
    "nonfinite_parameter_names",
    "unitwise_norm",
]
