"""Under DDP, RNNInitializer(seed=None) gives identical weights on both ranks (2 CPU processes, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.helpers import run_two_rank_ddp

SCRIPT = Path(__file__).with_name("ddp_initializer_script.py")


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_ranks_get_identical_weights_without_seed(tmp_path):
    run_two_rank_ddp(SCRIPT, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    # the initializer really ran: the LSTM's input-gate bias is minus its forget-gate bias (chrono)
    bias = rank0["rnn.bias_ih_l0"]
    assert bias[:8] == [-b for b in bias[8:16]] and any(b != 0 for b in bias[8:16])
