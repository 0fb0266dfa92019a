"""One rank of a two-process CPU DDP (gloo) run of LossSpikeRecovery with a spike on rank 0 only.

Started twice by ``test_loss_spike_recovery_ddp.py`` through ``tests.helpers.run_two_rank_ddp``; writes
``rank{N}.json`` with the decisions, the snapshot and the final weights of that rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rnn_stability.callbacks import LossSpikeRecovery
from tests.callbacks.spiky_models import SPIKE, SpikyRegressor
from tests.helpers import adding_loader, ddp_script_main, two_rank_ddp_trainer

SPIKE_CALL = 6


class Dump(Callback):
    def __init__(self, recovery: LossSpikeRecovery, out_dir: str) -> None:
        self.recovery, self.out_dir = recovery, out_dir
        self.rollbacks: list[int] = []
        self.snapshot: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.rollbacks.append(self.recovery.num_rollbacks)
        snapshot = self.recovery.snapshot
        assert snapshot is not None
        tensors = [*snapshot.model.values()]
        for state in snapshot.optimizers[0]["state"].values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        self.snapshot = torch.cat([t.flatten().float() for t in tensors]).tolist()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()]).tolist()
        result = dict(
            rollbacks=self.rollbacks,
            snapshot=self.snapshot,
            weights=weights,
            state=self.recovery.state_dict(),
        )
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def main(out_dir: str) -> None:
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    recovery = LossSpikeRecovery(
        action="rollback", warmup_steps=3, snapshot_every_n_steps=4, cooldown_steps=2
    )
    trainer = two_rank_ddp_trainer(max_steps=10, callbacks=[recovery, Dump(recovery, out_dir)])
    model = SpikyRegressor(spikes={SPIKE_CALL: SPIKE}, ranks=(0,), scheduler=True)
    trainer.fit(model, adding_loader(num_samples=80, batch_size=4))


if __name__ == "__main__":
    ddp_script_main(main)
