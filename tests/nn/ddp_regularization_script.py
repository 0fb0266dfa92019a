"""One rank of a two-process CPU DDP (gloo) `Trainer.fit` of an LSTM with `weight_dropout`; writes ``rank{N}.json``.

Started twice by ``test_regularization_lightning.py`` (see ``tests.helpers.run_two_rank_ddp``). Each rank draws its
own masks; DDP averages the gradients that reach the real ``weight_hh``, so the weights stay identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from rnn_stability.nn import LSTM
from tests.helpers import TinyRNNRegressor, adding_loader, ddp_script_main


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rnn = LSTM(2, 8, num_layers=2, batch_first=True, weight_dropout=0.5, input_dropout=0.2)
    model = TinyRNNRegressor(rnn)
    before = rnn.weight_hh_l0.detach().clone()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, adding_loader(num_samples=32, batch_size=4))
    result = {
        "weights": {name: p.detach().flatten().tolist() for name, p in model.named_parameters()},
        "moved": not torch.equal(before, rnn.weight_hh_l0.detach()),
        "keys": sorted(model.state_dict()),
    }
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    ddp_script_main(main)
