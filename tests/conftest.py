"""Shared fixtures: tiny Lightning models and a quiet Trainer factory for real ``Trainer.fit`` runs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("PL_DISABLE_FORK", "1")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Tests run in parallel on 2 cores: one intra-op thread each keeps them from oversubscribing."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


ROOT = Path(__file__).resolve().parents[1]
# What a callback writes into the working directory when a Trainer has no logger and no default_root_dir
# (GradientFlowMonitor's plots, Lightning's logs): tests must pass `tmp_path` (e.g. `quiet_trainer(tmp_path)`).
LEFT_IN_REPOSITORY = ("gradient_flow", "lightning_logs", "checkpoints")


@pytest.fixture(autouse=True)
def _nothing_written_into_the_repository():
    before = {name for name in LEFT_IN_REPOSITORY if (ROOT / name).exists()}
    yield
    written = [name for name in LEFT_IN_REPOSITORY if name not in before and (ROOT / name).exists()]
    assert not written, f"the test wrote {written} into the repository; give its Trainer a tmp_path"
