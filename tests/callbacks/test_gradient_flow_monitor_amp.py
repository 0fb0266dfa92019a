"""GradientFlowMonitor under an fp16 GradScaler: steps the scaler skipped are not recorded (real fits)."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.plugins import MixedPrecision
from torch import nn

from rnn_stability.callbacks import GradientFlowMonitor
from tests.callbacks.test_gradient_flow_monitor import RecordingLogger
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class _InfLossAt(TinyRNNRegressor):
    """An infinite loss at the chosen steps, as an overflowing loss scale gives: the scaler skips them."""

    def __init__(self, bad_steps: set[int]) -> None:
        super().__init__(rnn=nn.GRU(2, 8, batch_first=True))
        self.bad_steps = bad_steps

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * math.inf if self.trainer.global_step in self.bad_steps else loss


def _fit(bad_steps: set[int], every_n_steps: int, max_steps: int, **kwargs: Any):
    torch.manual_seed(0)
    monitor = GradientFlowMonitor(every_n_steps=every_n_steps, save_plots=False)
    logger = RecordingLogger()
    # Lightning turns precision="16-mixed" into bf16 on CPU; an explicit plugin gives a real GradScaler
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**4))
    trainer = quiet_trainer(
        max_steps=max_steps, callbacks=[monitor], plugins=[plugin], logger=logger, **kwargs
    )
    trainer.fit(_InfLossAt(bad_steps), adding_loader())
    return trainer, monitor, logger


def test_steps_skipped_by_the_scaler_are_not_recorded() -> None:
    trainer, monitor, logger = _fit({1}, every_n_steps=1, max_steps=4)
    assert trainer.precision_plugin.scaler.get_scale() == 8.0  # the scaler did skip step 1
    assert [step for step, _ in monitor.history] == [0, 2, 3]
    assert all(torch.isfinite(p["rnn"]).all() for _, p in monitor.history)
    assert [step for step, _ in logger.records] == [0, 2, 3]
    assert all(record["grad_flow/rnn/verdict"] != 1.0 for _, record in logger.records)
    assert monitor.num_measurements == 3 and monitor.num_skipped_measurements == 1


def test_a_skipped_measuring_step_is_measured_again_at_the_next_step() -> None:
    # loss-scale calibration typically overflows at step 0, the first measuring step
    _, monitor, _ = _fit({0}, every_n_steps=3, max_steps=5)
    assert [step for step, _ in monitor.history] == [1, 3]


def test_skips_under_gradient_accumulation() -> None:
    _, monitor, _ = _fit({1}, every_n_steps=1, max_steps=3, accumulate_grad_batches=2)
    assert [step for step, _ in monitor.history] == [0, 2]
