"""One rank of a two-process CPU DDP (gloo) run of RNNInitializer; writes ``rank{N}.json``.

Started twice by ``test_rnn_initializer_ddp.py`` (see ``tests.helpers.run_two_rank_ddp``). Each rank reseeds its
global RNG differently just before the initializer runs, so only a shared seed keeps the ranks identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rnn_stability.callbacks import RNNInitializer
from tests.helpers import TinyRNNRegressor, adding_loader, ddp_script_main


class DivergeGlobalRNG(Callback):
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(1000 + trainer.global_rank)


class DumpInitialWeights(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = {name: p.detach().flatten().tolist() for name, p in pl_module.named_parameters()}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(weights))


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    model = TinyRNNRegressor(torch.nn.LSTM(2, 8, num_layers=2, batch_first=True))
    callbacks = [DivergeGlobalRNG(), RNNInitializer("chrono", max_timescale=12), DumpInitialWeights(out_dir)]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, adding_loader(num_samples=16, batch_size=4))


if __name__ == "__main__":
    ddp_script_main(main)
