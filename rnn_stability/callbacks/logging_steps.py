"""When a callback logs, and through which channel, so that values reach the loggers on time and once.

Lightning writes values logged with `pl_module.log(on_step=True)` to its loggers only on its own logging
steps (`Trainer(log_every_n_steps=...)`), and writes such a value again, stale, at each later logging step
of the epoch until it is logged anew. A callback whose interval is the Trainer's can use `pl_module.log`
(the values then also reach `trainer.callback_metrics` for `EarlyStopping`/`ModelCheckpoint`); any
other interval goes to `trainer.loggers` directly, as `lightning.pytorch.callbacks.LearningRateMonitor`
does.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from torch import Tensor

__all__ = ["is_logging_step", "log_step_metrics", "resolve_interval"]


def resolve_interval(trainer: pl.Trainer, log_every_n_steps: int | None) -> int:
    """The callback's logging interval: its own, or the Trainer's when it is `None` (0: never log)."""
    if log_every_n_steps is not None:
        return log_every_n_steps
    return int(getattr(trainer, "log_every_n_steps", 0) or 0)


def is_logging_step(trainer: pl.Trainer, interval: int) -> bool:
    """Lightning's own rule for a logging step, applied to `interval` (Python integers only, no sync)."""
    if interval <= 0:
        return False
    return (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % interval == 0 or trainer.should_stop


def log_step_metrics(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    metrics: Mapping[str, float | Tensor],
    interval: int,
) -> None:
    """Log `metrics` for the current optimizer step through the channel that keeps them on time.

    With `interval` equal to the Trainer's, `pl_module.log_dict` is used; otherwise the values are
    converted to floats (a host sync; call this on logging steps only) and written to every logger.
    """
    if not metrics:
        return
    if interval == getattr(trainer, "log_every_n_steps", None):
        pl_module.log_dict(dict(metrics), on_step=True, on_epoch=False, batch_size=1)
        return
    values = {key: float(value) for key, value in metrics.items()}
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
