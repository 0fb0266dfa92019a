"""LossSpikeRecovery in real `Trainer.fit` runs: skip, rollback, cooldown, giving up, argument checks."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from rnn_stability.callbacks import LossSpikeRecovery
from tests.callbacks.spiky_models import SPIKE, SpikyRegressor, StateProbe, assert_same, differs
from tests.helpers import adding_loader, quiet_trainer


def _fit(model, recovery, max_steps, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    probe = StateProbe()
    trainer = quiet_trainer(max_steps=max_steps, callbacks=[recovery, probe], **trainer_kwargs)
    trainer.fit(model, adding_loader(num_samples=160, batch_size=8))
    return trainer, probe


@pytest.mark.parametrize("factor", [SPIKE, math.nan, math.inf])
def test_skip_leaves_weights_and_optimizer_state_bit_identical(factor):
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3)
    trainer, probe = _fit(SpikyRegressor(spikes={5: factor}), recovery, 8)
    assert_same(probe.after[5], probe.before[5])  # weights, Adam moments and step counter untouched
    assert differs(probe.after[6], probe.before[6])  # the other steps train
    assert (recovery.num_spikes, recovery.num_skipped_steps, recovery.num_rollbacks) == (1, 1, 0)
    assert trainer.global_step == 8


def test_no_spike_no_action_and_warmup_ignores_finite_spikes():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3)
    _, probe = _fit(SpikyRegressor(spikes={1: SPIKE}), recovery, 6)  # step 1 is inside the warm-up
    assert differs(probe.after[1], probe.before[1])
    assert recovery.num_spikes == 0


def test_consecutive_skips_raise():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3, max_consecutive_skips=2)
    with pytest.raises(RuntimeError, match="max_consecutive_skips"):
        _fit(SpikyRegressor(spikes={4: math.nan, 5: math.nan}), recovery, 8)
    assert recovery.num_skipped_steps == 1


def test_rollback_restores_the_snapshot_exactly_and_training_continues():
    recovery = LossSpikeRecovery(
        action="rollback", warmup_steps=3, snapshot_every_n_steps=4, cooldown_steps=0
    )
    # snapshots after steps 4 and 8; a spike at step 9, a good step 10 that updates the optimizer state in
    # place, a spike at step 11 that must find the snapshot untouched by it
    trainer, probe = _fit(SpikyRegressor(spikes={9: SPIKE, 11: SPIKE}, scheduler=True), recovery, 16)
    snapshot = probe.after[7]  # the state at the end of the 8th batch
    assert_same(probe.after[9], snapshot)  # model, Adam state, StepLR state: all as in the snapshot
    assert differs(probe.after[10], snapshot)
    assert_same(probe.after[11], snapshot)
    assert recovery.snapshot is None  # released at the end of training
    assert (recovery.num_spikes, recovery.num_rollbacks, recovery.num_skipped_steps) == (2, 2, 0)
    assert trainer.global_step == 16
    assert differs(probe.after[15], snapshot)
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())


def test_snapshot_is_on_cpu_and_taken_every_n_good_steps():
    recovery = LossSpikeRecovery(action="rollback", warmup_steps=3, snapshot_every_n_steps=3)
    taken = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            taken.append(recovery.snapshot.step)
            assert all(t.device.type == "cpu" for t in recovery.snapshot.model.values())

    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_steps=8, callbacks=[recovery, Watch()])
    trainer.fit(SpikyRegressor(), adding_loader(num_samples=160, batch_size=8))
    assert taken == [0, 0, 3, 3, 3, 6, 6, 6]


def test_rollback_restores_the_detector_statistics_of_the_snapshot():
    recovery = LossSpikeRecovery(
        action="rollback", warmup_steps=3, snapshot_every_n_steps=4, cooldown_steps=0
    )
    statistics = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            statistics.append(recovery.state_dict()["detectors"])

    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_steps=12, callbacks=[recovery, Watch()])
    trainer.fit(SpikyRegressor(spikes={9: SPIKE}), adding_loader(num_samples=160, batch_size=8))
    # the snapshot of the 8th batch comes back with the loss statistics of then, not those of steps 9 and 10
    assert statistics[9] == statistics[7] != statistics[8]
    assert recovery.num_rollbacks == 1


def test_cooldown_scales_the_scheduled_lr_then_the_schedule_resumes():
    recovery = LossSpikeRecovery(
        action="rollback", warmup_steps=3, snapshot_every_n_steps=100, lr_factor=0.1, cooldown_steps=3
    )
    model = SpikyRegressor(spikes={6: SPIKE}, optimizer="sgd", scheduler=True)
    trainer, probe = _fit(model, recovery, 12)
    optimizer = trainer.optimizers[0]
    # scheduled lr: StepLR(step_size=3, gamma=0.5) from 0.1, rewound to the snapshot (step 0) by the rollback
    epochs = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]
    assert probe.scheduled_lrs == [0.1 * 0.5 ** (e // 3) for e in epochs]
    cooled = {7, 8, 9}
    expected = [lr * 0.1 if k in cooled else lr for k, lr in enumerate(probe.scheduled_lrs)]
    assert optimizer.used_lrs == expected
    assert optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** (5 // 3)  # never left scaled
    assert recovery.current_lr_factor == 1.0 and recovery.num_rollbacks == 1


def test_max_rollbacks_raises():
    # snapshots every 2 steps, so the ones rolled back to hold warm statistics (the first one, taken before any
    # step, would start the warm-up again and let the spike at step 9 through)
    recovery = LossSpikeRecovery(
        action="rollback", warmup_steps=3, max_rollbacks=2, cooldown_steps=1, snapshot_every_n_steps=2
    )
    with pytest.raises(RuntimeError, match="max_rollbacks"):
        _fit(SpikyRegressor(spikes={5: SPIKE, 7: math.nan, 9: SPIKE}), recovery, 12)
    assert recovery.num_rollbacks == 2 and recovery.num_spikes == 3


def test_negative_loss_raises_clearly():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3)
    with pytest.raises(RuntimeError, match="negative loss"):
        _fit(SpikyRegressor(spikes={2: -1.0}), recovery, 4)


def test_accumulated_windows_are_judged_on_their_mean_loss():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=100)
    model = SpikyRegressor()
    _fit(model, recovery, 4, accumulate_grad_batches=3)
    window_means = torch.tensor(model.losses, dtype=torch.float64).reshape(4, 3).mean(dim=1)
    state = recovery.state_dict()["detectors"][0]
    assert state["count"] == 4  # one judgement per optimizer step, not per micro-batch
    assert state["mean"] == pytest.approx(float(window_means.log().mean()), rel=1e-6)


def test_spike_in_one_micro_batch_drops_the_whole_window():
    recovery = LossSpikeRecovery(action="skip", warmup_steps=3)
    _, probe = _fit(SpikyRegressor(spikes={13: SPIKE}), recovery, 6, accumulate_grad_batches=3)
    assert_same(probe.after[14], probe.before[12])  # window 4 = micro-batches 12..14
    assert differs(probe.after[11], probe.before[9])
    assert recovery.num_skipped_steps == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(action="restart"), ValueError, "`action`"),
        (dict(alpha=1.0), ValueError, "`alpha`"),
        (dict(z_threshold=0), ValueError, "`z_threshold`"),
        (dict(warmup_steps=0), ValueError, "`warmup_steps`"),
        (dict(min_ratio=0.5), ValueError, "`min_ratio`"),
        (dict(min_ratio="2"), TypeError, "`min_ratio`"),
        (dict(snapshot_every_n_steps=0), ValueError, "`snapshot_every_n_steps`"),
        (dict(lr_factor=0.0), ValueError, "`lr_factor`"),
        (dict(lr_factor=1.5), ValueError, "`lr_factor`"),
        (dict(cooldown_steps=-1), ValueError, "`cooldown_steps`"),
        (dict(cooldown_steps=2.0), TypeError, "`cooldown_steps`"),
        (dict(max_rollbacks=0), ValueError, "`max_rollbacks`"),
        (dict(max_consecutive_skips=True), TypeError, "`max_consecutive_skips`"),
        (dict(log_every_n_steps=0), ValueError, "`log_every_n_steps`"),
    ],
)
def test_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        LossSpikeRecovery(**kwargs)


def test_default_action_is_skip():
    # the stability suite's stress condition (a bad batch every 50 steps) made the old "rollback" default give
    # up at max_rollbacks; skipping is the default that survives recurring bad batches
    assert LossSpikeRecovery().action == "skip"


def test_cooldown_scales_once_when_torch_runs_the_step_hooks_twice():
    # An optimizer subclass whose `step` calls its base class's makes torch run the step hooks twice once the
    # base class's `step` has been patched too (by building a plain instance of it, as other code may do first).
    # The cooldown factor must still apply once (it compounded to 0.1 x 0.1 on the scheduled lr).
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    test_cooldown_scales_the_scheduled_lr_then_the_schedule_resumes()
