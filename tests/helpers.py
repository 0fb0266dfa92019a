"""Tiny models and Trainer settings shared by the tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.data import adding_problem


class TinyRNNRegressor(L.LightningModule):
    """A recurrent layer and a linear head trained with MSE on the adding problem.

    Args:
        rnn: the recurrent module (``batch_first=True``); defaults to a 1-layer ``torch.nn.LSTM``.
        hidden_size: hidden width of the default LSTM.
        lr: Adam learning rate.
    """

    def __init__(self, rnn: nn.Module | None = None, hidden_size: int = 8, lr: float = 1e-2) -> None:
        super().__init__()
        self.rnn = rnn if rnn is not None else nn.LSTM(2, hidden_size, batch_first=True)
        out_features = getattr(self.rnn, "proj_size", 0) or self.rnn.hidden_size
        if getattr(self.rnn, "bidirectional", False):
            out_features *= 2
        self.head = nn.Linear(out_features, 1)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def adding_loader(num_samples: int = 64, seq_len: int = 12, batch_size: int = 8, seed: int = 0) -> DataLoader:
    """A deterministic (unshuffled) DataLoader over adding-problem data."""
    x, y = adding_problem(num_samples, seq_len, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def quiet_trainer(tmp_path: Any = None, **kwargs: Any) -> L.Trainer:
    """A CPU Trainer with progress bar, model summary and checkpointing off unless asked for."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=4,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path) if tmp_path is not None else None,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def two_rank_ddp_trainer(**kwargs: Any) -> L.Trainer:
    """The quiet CPU ``strategy="ddp"`` Trainer of one rank started by ``run_two_rank_ddp``."""
    return quiet_trainer(devices=2, strategy="ddp", **{"log_every_n_steps": 50, **kwargs})


def ddp_script_main(main: Any) -> None:
    """Run a two-rank script's ``main(OUT_DIR)`` (``OUT_DIR`` from the command line), then destroy the process
    group: a gloo group left to the interpreter's teardown can abort the process at exit ("terminate called
    without an active exception"), after the script has done its work."""
    import sys

    import torch.distributed as dist

    try:
        main(sys.argv[1])
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_two_rank_ddp(script: Any, out_dir: Any, timeout: float = 180.0) -> None:
    """Run ``python SCRIPT OUT_DIR`` as ranks 0 and 1 of a CPU DDP (gloo) job and assert both succeed.

    The environment (``LOCAL_RANK``/``NODE_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) makes
    Lightning's ``strategy="ddp"`` join the two processes instead of launching workers, so pytest never
    re-launches itself.
    """
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out_dir)],
            cwd=root,
            env={**env, "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]


def native_kernel_or_skip() -> Any:
    """The built C++ LSTM ops; skip where they cannot be built, fail instead under
    ``RNN_STABILITY_REQUIRE_NATIVE=1`` (set by ``make pytest``, so CI cannot pass by skipping them)."""
    from rnn_stability.nn.native import native_ops

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RNN_STABILITY_NATIVE", raising=False)
        ops = native_ops()
    if ops is None:
        if os.environ.get("RNN_STABILITY_REQUIRE_NATIVE") == "1":
            pytest.fail("the C++ layer-norm LSTM kernel could not be built (see the RuntimeWarning)")
        pytest.skip("the C++ layer-norm LSTM kernel could not be built on this machine")
    return ops
