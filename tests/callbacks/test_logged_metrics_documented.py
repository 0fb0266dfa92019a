"""Every key the callbacks log in a real `Trainer.fit` is in the table of docs/guide/metrics.md, and back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from rnn_stability.callbacks import (
    AdaptiveGradientClipping,
    GradientFlowMonitor,
    GradientNormMonitor,
    LossSpikeRecovery,
    RNNInitializer,
)
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer

TABLE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "metrics.md"
NOT_FROM_CALLBACKS = {"train_loss", "epoch"}  # the model's own `self.log` and Lightning's epoch counter


class KeyLogger(Logger):
    """Keeps the name of every metric it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()

    @property
    def name(self) -> str:
        return "keys"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.keys |= set(metrics)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def _documented() -> dict[str, tuple[re.Pattern[str], str]]:
    """`{key as written: (pattern, "when" column)}` from the table's rows."""
    rows = {}
    for line in TABLE.read_text().splitlines():
        match = re.match(r"\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", line)
        if match:
            key, when = match.groups()
            pattern = re.sub(r"<[^>]+>", "[^/]+", re.escape(key).replace(r"\<", "<").replace(r"\>", ">"))
            rows[key] = (re.compile(f"{pattern}(/optimizer_\\d+)?"), when)
    return rows


def _fit_keys(tmp_path: Path, callbacks: list[Any]) -> set[str]:
    torch.manual_seed(0)
    model = TinyRNNRegressor(rnn=nn.LSTM(2, 8, num_layers=2, bidirectional=True, batch_first=True))
    logger = KeyLogger()
    trainer = quiet_trainer(tmp_path, max_steps=6, callbacks=callbacks, logger=logger, log_every_n_steps=1)
    trainer.fit(model, adding_loader())
    return logger.keys - NOT_FROM_CALLBACKS


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    everything = [
        RNNInitializer(scheme="chrono", max_timescale=12.0),
        AdaptiveGradientClipping(strategy="zscore", warmup_steps=2),
        GradientNormMonitor(log_weight_norms=True, log_update_ratio=True),
        GradientFlowMonitor(every_n_steps=2, save_plots=False),
        LossSpikeRecovery(warmup_steps=2),
    ]
    alone = [GradientNormMonitor(granularity="parameter")]  # the totals are its own without a clipper
    return _fit_keys(tmp_path_factory.mktemp("all"), everything) | _fit_keys(
        tmp_path_factory.mktemp("alone"), alone
    )


def test_every_logged_key_is_documented(logged: set[str]) -> None:
    patterns = [pattern for pattern, _ in _documented().values()]
    missing = sorted(key for key in logged if not any(p.fullmatch(key) for p in patterns))
    assert not missing, f"logged but not in {TABLE.name}: {missing}"
    assert {"grad_norm/rnn.l1_reverse", "grad_flow/rnn/verdict", "loss_spikes/spikes"} <= logged


def test_every_documented_scalar_is_logged(logged: set[str]) -> None:
    rows = _documented()
    assert len(rows) > 20
    unseen = [
        key
        for key, (pattern, when) in rows.items()
        if "images" not in when and not any(pattern.fullmatch(k) for k in logged)
    ]
    assert not unseen, f"documented in {TABLE.name} but never logged: {unseen}"
