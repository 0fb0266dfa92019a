"""In-memory recording of a training run: every logged metric and the loss of every step."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

__all__ = ["MemoryLogger", "LossRecorder"]


class MemoryLogger(Logger):
    """A Lightning logger that keeps every logged scalar as a list of `(step, value)` pairs.

    Args:
        save_dir: folder reported to callbacks that write files next to the logs.

    Examples:
        >>> logger = MemoryLogger()
        >>> logger.log_metrics({"loss": 0.5}, step=3)
        >>> logger.history["loss"]
        [(3, 0.5)]
    """

    def __init__(self, save_dir: str | None = None) -> None:
        super().__init__()
        self._save_dir = save_dir
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    @property
    @override
    def name(self) -> str:
        return "memory"

    @property
    @override
    def version(self) -> int:
        return 0

    @property
    @override
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    @override
    def log_dir(self) -> str | None:
        return self._save_dir

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.history[key].append((-1 if step is None else int(step), float(value)))


class LossRecorder(L.Callback):
    """Records the training loss of every step and reports progress at most every `interval_s` seconds.

    Args:
        on_progress: called as `on_progress(step, smoothed_loss)`; `smoothed_loss` is an exponential
            moving average of the loss with factor `smoothing`.
        interval_s: minimum seconds between two progress reports (the last step is always reported).
        smoothing: weight of the past in the moving average, in [0, 1).

    Examples:
        >>> recorder = LossRecorder(interval_s=0.0)
        >>> recorder.losses
        []
    """

    def __init__(
        self,
        on_progress: Callable[[int, float], None] | None = None,
        interval_s: float = 0.2,
        smoothing: float = 0.95,
    ) -> None:
        if not interval_s >= 0:
            raise ValueError(f"`interval_s` must be a float >= 0, got {interval_s!r}.")
        if not 0 <= smoothing < 1:
            raise ValueError(f"`smoothing` must be a float in [0, 1), got {smoothing!r}.")
        self.on_progress = on_progress
        self.interval_s = interval_s
        self.smoothing = smoothing
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self._last_report = -math.inf

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        value = float(loss)
        self.losses.append(value)
        previous = self.smoothed[-1] if self.smoothed and math.isfinite(self.smoothed[-1]) else value
        self.smoothed.append(self.smoothing * previous + (1 - self.smoothing) * value)
        now = time.monotonic()
        done = trainer.global_step >= (trainer.max_steps if trainer.max_steps > 0 else math.inf)
        if self.on_progress is not None and (done or now - self._last_report >= self.interval_s):
            self._last_report = now
            self.on_progress(trainer.global_step, self.smoothed[-1])
