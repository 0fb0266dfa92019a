"""What the forecasting-library tests share: generated series (bundled datasets download), quiet runs, metrics."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from lightning.pytorch import Callback
from typing_extensions import override

from rnn_stability.nn import native


class LastMetrics(Callback):
    """Keeps the metrics logged in `fit` (the libraries' `predict` attaches a new Trainer to the model).

    Runs under `pytorch_lightning` (darts, neuralforecast) too: Lightning calls hooks by name.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.metrics = dict(trainer.callback_metrics)


def monthly_values(length: int = 72, phase: float = 0.0, seed: int = 0) -> np.ndarray:
    """Trend, yearly cycle and noise, float32."""
    t = np.arange(length)
    noise = np.random.default_rng(seed).normal(0.0, 0.05, length)
    return (1 + t / length + 0.3 * np.sin(2 * np.pi * t / 12 + phase) + noise).astype(np.float32)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the libraries' Trainer banners and warnings about tiny data (they are not under test)."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@pytest.fixture(autouse=True)
def isolated_library_run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Runs in `tmp_path` (the libraries' `predict` Trainers write `lightning_logs/` into the working
    directory), with the C++ kernel's buffer pool emptied after: a buffer pooled under `torch.inference_mode`
    (the libraries' `predict`) and reused by a later forward that autograd records fails ("Inference tensors
    cannot be saved for backward"), a bug of the kernel's pool outside these tests' subject.
    """
    monkeypatch.chdir(tmp_path)
    yield
    native.empty_cache()
