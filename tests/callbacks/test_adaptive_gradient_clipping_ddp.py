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


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_consecutive_nonfinite_error_names_the_rank_that_held_them(tmp_path):
    run_two_rank_ddp(Path(__file__).with_name("ddp_nonfinite_script.py"), tmp_path)
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert "2 consecutive optimizer steps" in rank0 and "2 consecutive optimizer steps" in rank1
    assert "parameters with non-finite gradients on rank 0: ['head.weight']" in rank0
    assert "none on this rank (1): they came from rank(s) [0]" in rank1
