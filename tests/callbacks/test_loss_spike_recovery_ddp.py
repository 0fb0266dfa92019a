"""Under DDP a spike on one rank makes every rank roll back, to identical snapshots (2 CPU processes, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.helpers import run_two_rank_ddp

SCRIPT = Path(__file__).with_name("ddp_loss_spike_script.py")


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_spike_on_one_rank_rolls_back_every_rank_alike(tmp_path):
    run_two_rank_ddp(SCRIPT, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # only rank 0's loss spiked (step 6); the mean loss over ranks made rank 1 roll back at the same step
    assert rank0["rollbacks"] == rank1["rollbacks"] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert rank0["state"] == rank1["state"]  # same loss history, counters and cooldown
    assert rank0["snapshot"] == rank1["snapshot"]
    assert rank0["weights"] == rank1["weights"]
