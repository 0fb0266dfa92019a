"""Training conditions: the task's normal learning rate, and stress (learning rate ×10, corrupt batches).

A corrupt batch is simulated in the loss the model returns, so that the logged loss, the gradient and every
callback see what a real bad batch would give: every `CORRUPT_EVERY` steps (from step `CORRUPT_OFFSET`) the
loss is, alternately, multiplied by `SPIKE_FACTOR` (an outlier batch: a gradient 1000× too large) or made
NaN (a batch holding a NaN, or an overflow). The same steps are corrupted for every recipe and seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
from torch import Tensor

__all__ = [
    "CONDITIONS",
    "CORRUPT_EVERY",
    "CORRUPT_OFFSET",
    "SPIKE_FACTOR",
    "Condition",
    "corrupt_kind",
    "inject_corrupt_batches",
]

CORRUPT_EVERY = 50
CORRUPT_OFFSET = 25
SPIKE_FACTOR = 1000.0


@dataclass(frozen=True)
class Condition:
    """A training condition.

    Args:
        name: key of the condition.
        title: one line for the tables.
        lr_factor: multiplies the task's normal learning rate.
        corrupt: inject corrupt batches (see the module docstring).
    """

    name: str
    title: str
    lr_factor: float = 1.0
    corrupt: bool = False


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("normal", "normal LR"),
        Condition("stress", "stress: LR ×10 + corrupt batches", lr_factor=10.0, corrupt=True),
    )
}


def corrupt_kind(step: int) -> str | None:
    """`"spike"`, `"nan"` or `None`: what the batch of 0-based optimizer step `step` is under stress.

    Examples:
        >>> [corrupt_kind(s) for s in (0, 25, 75, 125)]
        [None, 'spike', 'nan', 'spike']
    """
    if step % CORRUPT_EVERY != CORRUPT_OFFSET:
        return None
    return "nan" if (step // CORRUPT_EVERY) % 2 else "spike"


def inject_corrupt_batches(model: L.LightningModule) -> None:
    """Makes `model.training_step` return a corrupt loss on the steps `corrupt_kind` names."""
    original = model.training_step

    def training_step(*args: Any, **kwargs: Any) -> Tensor:
        loss = original(*args, **kwargs)
        if not isinstance(loss, Tensor):
            raise TypeError(f"corrupt batches need a `training_step` returning the loss tensor, got {loss!r}")
        kind = corrupt_kind(model.trainer.global_step)
        if kind == "spike":
            return loss * SPIKE_FACTOR
        if kind == "nan":
            return loss * math.nan
        return loss

    model.training_step = training_step  # type: ignore[method-assign]
