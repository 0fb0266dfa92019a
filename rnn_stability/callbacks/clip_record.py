"""What `rnn_stability.callbacks.AdaptiveGradientClipping` did at its latest optimizer step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["ClipRecord"]


@dataclass(frozen=True)
class ClipRecord:
    """One clipping decision, kept on the device (reading a field as a Python number is a host sync).

    Another callback, or a test, can read it as `AdaptiveGradientClipping.last_record` to see what the
    clipper did at the step just taken.

    Attributes:
        step: `trainer.global_step` when it was recorded (before the optimizer step increments it).
        optimizer_idx: index of the optimizer in `trainer.optimizers`.
        pre_clip_norm: total L2 norm of the optimizer's gradients before clipping (0-d tensor).
        post_clip_norm: total L2 norm after clipping; `0` for a skipped step (its gradients were dropped).
        threshold: the norm threshold in force (`max_norm`, the adaptive threshold, `clip_value` for
            "value", `clip_factor` for "agc").
        clipped: whether clipping changed the gradients (`post_clip_norm < pre_clip_norm`), bool 0-d tensor.
        skipped: whether the non-finite guard skipped the step, bool 0-d tensor.

    Examples:
        >>> import torch
        >>> record = ClipRecord(3, 0, torch.tensor(2.0), torch.tensor(1.0), torch.tensor(1.0),
        ...                     torch.tensor(True), torch.tensor(False))
        >>> record.step, bool(record.clipped)
        (3, True)
    """

    step: int
    optimizer_idx: int
    pre_clip_norm: Tensor
    post_clip_norm: Tensor
    threshold: Tensor
    clipped: Tensor
    skipped: Tensor
