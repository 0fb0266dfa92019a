"""One rank of a two-process CPU DDP (gloo) run whose non-finite gradients are on rank 0 only; writes the
error `AdaptiveGradientClipping` raises after K consecutive skips to ``rank{N}.txt``.

Started twice by ``test_adaptive_gradient_clipping_ddp.py`` (see ``ddp_clipping_script.py`` for the set-up).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from rnn_stability.callbacks import AdaptiveGradientClipping
from tests.helpers import TinyRNNRegressor, adding_loader, ddp_script_main


class RankZeroNaN(TinyRNNRegressor):
    """Corrupts rank 0's gradient at every step after DDP's all-reduce: rank 1's own gradients stay finite."""

    def on_after_backward(self) -> None:
        if self.global_rank == 0:
            self.head.weight.grad[0, 0] = math.nan


def main(out_dir: str) -> None:
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=6,
        callbacks=[AdaptiveGradientClipping(strategy="norm", max_consecutive_nonfinite=2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(RankZeroNaN(), adding_loader(num_samples=48, batch_size=4))
    except RuntimeError as error:
        Path(out_dir, f"rank{trainer.global_rank}.txt").write_text(str(error))


if __name__ == "__main__":
    ddp_script_main(main)
