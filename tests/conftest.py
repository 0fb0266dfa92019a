"""Shared fixtures: tiny Lightning models and a quiet Trainer factory for real ``Trainer.fit`` runs."""

from __future__ import annotations

import os
import warnings

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
