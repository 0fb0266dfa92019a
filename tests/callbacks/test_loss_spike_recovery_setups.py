"""LossSpikeRecovery with several optimizers, AMP (bf16, fp16 GradScaler), the other callbacks, and its logs."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from rnn_stability.callbacks import AdaptiveGradientClipping, GradientNormMonitor, LossSpikeRecovery
from tests.callbacks.spiky_models import SPIKE, SpikyRegressor, StateProbe, assert_same, differs
from tests.helpers import adding_loader, quiet_trainer


class TwoOptimizers(SpikyRegressor):
    """Manual optimization: the recurrent layer and the head have their own optimizer and their own loss."""

    def __init__(self, spikes_rnn: dict[int, float], spikes_head: dict[int, float]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.spikes_rnn, self.spikes_head = spikes_rnn, spikes_head

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_rnn, opt_head = self.optimizers()
        x, y = batch
        for opt, spikes in ((opt_rnn, self.spikes_rnn), (opt_head, self.spikes_head)):
            opt.zero_grad()
            self.manual_backward(nn.functional.mse_loss(self(x), y) * spikes.get(batch_idx, 1.0))
            opt.step()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.rnn.parameters(), lr=1e-2), torch.optim.SGD(
            self.head.parameters(), lr=0.1
        )


def _fit(model, callbacks, max_steps, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    probe = StateProbe()
    trainer = quiet_trainer(max_steps=max_steps, callbacks=[*callbacks, probe], **trainer_kwargs)
    trainer.fit(model, adding_loader(num_samples=160, batch_size=8))
    return trainer, probe


def _head_state(state: dict[str, Any]) -> tuple[Any, ...]:
    return {k: v for k, v in state["model"].items() if k.startswith("head")}, state["optimizers"][1]


def test_two_optimizers_skip_only_the_one_whose_loss_spiked():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3)
    trainer, probe = _fit(TwoOptimizers({}, {5: SPIKE}), [recovery], 16)  # global_step counts both
    assert_same(_head_state(probe.after[5]), _head_state(probe.before[5]))
    assert differs(probe.after[5]["optimizers"][0], probe.before[5]["optimizers"][0])
    assert sorted(recovery.state_dict()["detectors"]) == [0, 1]
    assert recovery.num_skipped_steps == 1 and trainer.global_step == 16


def test_two_optimizers_rollback_restores_both():
    recovery = LossSpikeRecovery(action="rollback", warmup_steps=3, snapshot_every_n_steps=8)
    _, probe = _fit(TwoOptimizers({6: SPIKE}, {}), [recovery], 16)  # snapshot after batch 3 (8 steps)
    assert_same(probe.after[6], probe.after[3])
    assert differs(probe.after[5], probe.after[3])
    assert recovery.num_rollbacks == 1


def test_bf16_mixed_skip_and_rollback():
    skip = LossSpikeRecovery(action="skip", warmup_steps=3)
    _, probe = _fit(SpikyRegressor(spikes={5: SPIKE}), [skip], 7, precision="bf16-mixed")
    assert_same(probe.after[5], probe.before[5])
    rollback = LossSpikeRecovery(action="rollback", warmup_steps=3, snapshot_every_n_steps=2)
    _, probe = _fit(SpikyRegressor(spikes={5: math.nan}), [rollback], 7, precision="bf16-mixed")
    assert_same(probe.after[5], probe.after[3])
    assert skip.num_skipped_steps == 1 and rollback.num_rollbacks == 1


def test_fp16_grad_scaler_state_is_rolled_back_and_the_loss_judged_unscaled():
    # fp16 autocast on CPU has no LSTM kernel; a GRU is enough to drive the GradScaler
    recovery = LossSpikeRecovery(action="rollback", warmup_steps=3, snapshot_every_n_steps=2)
    model = SpikyRegressor(spikes={7: SPIKE}, rnn=nn.GRU(2, 8, batch_first=True))
    trainer, probe = _fit(model, [recovery], 10, plugins=[MixedPrecision("16-mixed", "cpu")])
    assert probe.after[5]["scaler"]["scale"] != probe.before[0]["scaler"]["scale"]  # it did calibrate
    assert_same(probe.after[7], probe.after[5])  # scaler state included
    assert recovery.num_rollbacks == 1
    warmup = torch.tensor(model.losses[:3], dtype=torch.float64).log()
    fresh = LossSpikeRecovery(action="skip", warmup_steps=100)
    _fit(
        SpikyRegressor(rnn=nn.GRU(2, 8, batch_first=True)),
        [fresh],
        3,
        plugins=[MixedPrecision("16-mixed", "cpu")],
    )
    assert fresh.state_dict()["detectors"][0]["mean"] == pytest.approx(float(warmup.mean()), rel=1e-5)


def test_beside_adaptive_clipping_and_the_norm_monitor():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3)
    clipper = AdaptiveGradientClipping(strategy="zscore", warmup_steps=3)
    monitor = GradientNormMonitor(log_every_n_steps=1)
    _, probe = _fit(SpikyRegressor(spikes={4: math.nan, 6: SPIKE}), [recovery, clipper, monitor], 9)
    assert_same(probe.after[4], probe.before[4])
    assert_same(probe.after[6], probe.before[6])
    assert recovery.num_skipped_steps == 2
    assert clipper.num_skipped_steps == 0  # the dropped steps left it no gradients to count again
    assert clipper.num_steps == 7


def test_logs_counts_and_lr_factor(tmp_path):
    recovery = LossSpikeRecovery(action="rollback", warmup_steps=3, lr_factor=0.25, cooldown_steps=2)
    _fit(
        SpikyRegressor(spikes={4: SPIKE}),
        [recovery],
        8,
        logger=CSVLogger(tmp_path, name="log"),
        log_every_n_steps=1,
    )
    import csv

    rows = list(csv.DictReader((tmp_path / "log" / "version_0" / "metrics.csv").open()))
    logged = {int(r["step"]): r for r in rows if r.get("loss_spikes/rollbacks")}
    assert [float(logged[s]["loss_spikes/rollbacks"]) for s in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [float(logged[s]["loss_spikes/lr_factor"]) for s in range(8)] == [1, 1, 1, 1, 1, 0.25, 0.25, 1]
    assert float(logged[7]["loss_spikes/spikes"]) == 1.0
