"""LossSpikeRecovery resumes mid-cooldown from a checkpoint exactly; the checkpoint holds plain values only."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from rnn_stability.callbacks import LossSpikeRecovery
from tests.callbacks.spiky_models import SPIKE, SpikyRegressor
from tests.helpers import adding_loader, quiet_trainer


def _run(tmp_path: Any, max_steps: int, ckpt_path: str | None = None, save: bool = False):
    L.seed_everything(0, verbose=False)
    # the spike is at the model's 7th call in the uninterrupted run; a resumed run starts counting at 0
    model = SpikyRegressor(spikes={} if ckpt_path else {6: SPIKE}, optimizer="sgd", scheduler=True)
    recovery = LossSpikeRecovery(
        action="rollback", warmup_steps=3, snapshot_every_n_steps=4, lr_factor=0.1, cooldown_steps=8
    )
    callbacks: list[Callback] = [recovery]
    if save:
        callbacks.append(
            ModelCheckpoint(dirpath=tmp_path.parent / "ckpt", every_n_train_steps=10, save_top_k=-1)
        )
    trainer = quiet_trainer(tmp_path, max_steps=max_steps, callbacks=callbacks, enable_checkpointing=save)
    trainer.fit(model, adding_loader(num_samples=80, batch_size=8), ckpt_path=ckpt_path)  # 10 batches/epoch
    return model, recovery, trainer.optimizers[0].used_lrs


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, int | float | str | bool) or value is None


def test_resume_mid_cooldown_matches_the_uninterrupted_run(tmp_path):
    straight_model, straight, straight_lrs = _run(tmp_path / "a", 20)
    _run(tmp_path / "b", 10, save=True)
    ckpt = str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt")
    state = next(v for k, v in torch.load(ckpt, weights_only=False)["callbacks"].items() if "LossSpike" in k)
    assert state["cooldown_left"] == 5 and state["num_rollbacks"] == 1  # cooled steps 7, 8, 9 of 8
    assert _plain(state)  # no snapshot, no tensors
    resumed_model, resumed, resumed_lrs = _run(tmp_path / "c", 20, ckpt_path=ckpt)

    assert resumed_lrs == straight_lrs[10:]  # 5 more cooled steps, then the schedule
    assert resumed_lrs[4] != resumed_lrs[5]
    assert resumed.state_dict() == straight.state_dict()
    for (name, a), (_, b) in zip(
        straight_model.named_parameters(), resumed_model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
