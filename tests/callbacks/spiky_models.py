"""Tiny models whose loss spikes (or turns NaN) at chosen steps, and a probe recording the training state."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from rnn_stability.callbacks.training_snapshot import cpu_copy
from tests.helpers import TinyRNNRegressor

SPIKE = 1e4


class SpikyRegressor(TinyRNNRegressor):
    """`TinyRNNRegressor` whose loss is multiplied by `spikes[k]` at its `k`-th `training_step` call.

    Args:
        spikes: call index (0-based; one call per micro-batch) -> loss factor (`SPIKE`, `nan`, ...).
        optimizer: `"adam"` or `"sgd"` (plain SGD, so the learning rate of a step shows in its update).
        scheduler: a `StepLR(step_size=3, gamma=0.5)` stepped every optimizer step, if True.
        ranks: the ranks whose loss is multiplied (`None`: all).
    """

    def __init__(
        self,
        spikes: dict[int, float] | None = None,
        optimizer: str = "adam",
        scheduler: bool = False,
        ranks: tuple[int, ...] | None = None,
        rnn: nn.Module | None = None,
    ) -> None:
        super().__init__(rnn=rnn)
        self.spikes, self.optimizer_name, self.use_scheduler, self.ranks = (
            spikes or {},
            optimizer,
            scheduler,
            ranks,
        )
        self.calls = 0
        self.losses: list[float] = []  # the true loss of every call, before any spike factor

    def spiked(self, loss: torch.Tensor) -> torch.Tensor:
        factor = self.spikes.get(self.calls)
        self.calls += 1
        self.losses.append(float(loss.detach()))
        if factor is None or (self.ranks is not None and self.global_rank not in self.ranks):
            return loss
        return loss * factor

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.spiked(super().training_step(batch, batch_idx))

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "sgd":
            optimizer: torch.optim.Optimizer = RecordingSGD(self.parameters(), lr=0.1)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        if not self.use_scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class RecordingSGD(torch.optim.SGD):
    """SGD that records the learning rate each `step()` actually applies (after the step pre-hooks)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.used_lrs: list[float] = []

    def step(self, closure: Any = None) -> Any:
        self.used_lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def training_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """CPU copies of the model, optimizer, scheduler and scaler states."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return cpu_copy(
        {
            "model": pl_module.state_dict(),
            "optimizers": [opt.state_dict() for opt in trainer.optimizers],
            "schedulers": [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs],
            "scaler": None if scaler is None else scaler.state_dict(),
        }
    )


class StateProbe(Callback):
    """`before[k]` / `after[k]`: the training state at the start / end of the `k`-th batch, and its lrs."""

    def __init__(self) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[dict[str, Any]] = []
        self.scheduled_lrs: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.before.append(training_state(trainer, pl_module))
        self.scheduled_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.after.append(training_state(trainer, pl_module))


def assert_same(a: Any, b: Any) -> None:
    """Bit-identical nested states (tensors compared exactly, other values with ==)."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def differs(a: Any, b: Any) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return True
    return False
