"""Under DDP every rank takes the same clipping and skipping decisions (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_clipping_script.py")


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_ranks_take_identical_decisions(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(tmp_path)],
            cwd=ROOT,
            env={**env, "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
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
