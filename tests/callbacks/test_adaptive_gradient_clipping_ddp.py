"""Under DDP every rank takes the same clipping and skipping decisions (2 CPU processes, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.helpers import run_two_rank_ddp

SCRIPT = Path(__file__).with_name("ddp_clipping_script.py")


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_ranks_take_identical_decisions(tmp_path):
    run_two_rank_ddp(SCRIPT, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    decisions = [
        [(r["step"], r["threshold"], r["clipped"], r["skipped"]) for r in rank["records"]]
        for rank in (rank0, rank1)
    ]
    assert decisions[0] == decisions[1]
    assert [r["skipped"] for r in rank0["records"]] == [False, False, False, True, False, False]
    # only rank 0 saw the NaN; the all-reduced flag made rank 1 skip the same step
    assert rank0["skipped"] == rank1["skipped"] == 1
    assert any(r["clipped"] for r in rank0["records"])
    assert rank0["weights"] == rank1["weights"]
