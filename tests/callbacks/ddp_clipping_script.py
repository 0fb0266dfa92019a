"""One rank of a two-process CPU DDP (gloo) run of AdaptiveGradientClipping; writes ``rank{N}.json``.

``test_adaptive_gradient_clipping_ddp.py`` starts two of these, ``python tests/callbacks/ddp_clipping_script.py
OUT_DIR``, with ``LOCAL_RANK``/``NODE_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, so Lightning's
``strategy="ddp"`` joins them instead of launching workers (pytest must not re-launch itself, and
a launcher process would import Lightning a third time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rnn_stability.callbacks import AdaptiveGradientClipping
from tests.helpers import TinyRNNRegressor, adding_loader, ddp_script_main, two_rank_ddp_trainer

NAN_STEP = 3


class RankLocalNaN(TinyRNNRegressor):
    """Corrupts rank 0's gradient only, after DDP's all-reduce, so the ranks disagree unless reconciled."""

    def on_after_backward(self) -> None:
        if self.trainer.global_step == NAN_STEP and self.global_rank == 0:
            self.head.weight.grad[0, 0] = math.nan


class Dump(Callback):
    def __init__(self, clipper: AdaptiveGradientClipping, out_dir: str) -> None:
        self.clipper, self.out_dir = clipper, out_dir
        self.records: list[dict[str, Any]] = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        r = self.clipper.last_record
        assert r is not None
        self.records.append(
            dict(
                step=r.step,
                pre=r.pre_clip_norm.item(),
                threshold=r.threshold.item(),
                clipped=bool(r.clipped),
                skipped=bool(r.skipped),
            )
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()]).tolist()
        result = dict(records=self.records, weights=weights, skipped=self.clipper.num_skipped_steps)
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def main(out_dir: str) -> None:
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    clipper = AdaptiveGradientClipping(strategy="zscore", alpha=0.5, warmup_steps=2, z_threshold=0.1)
    trainer = two_rank_ddp_trainer(max_steps=6, callbacks=[clipper, Dump(clipper, out_dir)])
    trainer.fit(RankLocalNaN(), adding_loader(num_samples=48, batch_size=4))


if __name__ == "__main__":
    ddp_script_main(main)
