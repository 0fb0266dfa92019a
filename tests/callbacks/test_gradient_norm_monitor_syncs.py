"""GradientNormMonitor makes no host synchronisation outside logging steps (counted during a real fit)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import rnn_stability
from rnn_stability.callbacks import AdaptiveGradientClipping, GradientNormMonitor, gradient_norm_monitor
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer

# every way a tensor's value reaches Python (each one a device-to-host copy and wait on an accelerator)
SYNCING_METHODS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "cpu", "numpy")
PACKAGE_DIR = str(Path(rnn_stability.__file__).parent)


class _StepTracker(Callback):
    """Remembers which step (Lightning's logging counter) the loop is in."""

    step = -1

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.step = trainer.fit_loop.epoch_loop._batches_that_stepped


def _count_syncs(
    monkeypatch: pytest.MonkeyPatch, tracker: _StepTracker, source: str = PACKAGE_DIR
) -> list[tuple[int, str]]:
    """Patch the syncing tensor methods to record (step, method) whenever ``source`` is on the call stack."""
    calls: list[tuple[int, str]] = []

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def recording(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_filename.startswith(source):
                    calls.append((tracker.step, name))
                    break
                frame = frame.f_back
            return original(self, *args, **kwargs)

        return recording

    for name in SYNCING_METHODS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return calls


def _monitor(log_every_n_steps: int) -> GradientNormMonitor:
    # every option on, so every code path of the hooks runs
    return GradientNormMonitor(
        log_every_n_steps=log_every_n_steps,
        log_weight_norms=True,
        log_update_ratio=True,
        warn_below=0.0,
        warn_above=1e9,
    )


def test_syncs_only_on_logging_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = _StepTracker()
    trainer = quiet_trainer(
        tmp_path, max_steps=7, log_every_n_steps=3, gradient_clip_val=0.5, callbacks=[tracker, _monitor(3)]
    )
    calls = _count_syncs(monkeypatch, tracker)
    trainer.fit(TinyRNNRegressor(), adding_loader())
    # logging steps are those where Lightning's counter + 1 is a multiple of 3: steps 2 and 5
    assert {step for step, _ in calls} == {2, 5}


def test_no_syncs_when_never_logging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = _StepTracker()
    trainer = quiet_trainer(
        tmp_path,
        max_steps=5,
        log_every_n_steps=100,
        gradient_clip_val=0.5,
        callbacks=[tracker, _monitor(100)],
    )
    calls = _count_syncs(monkeypatch, tracker)
    trainer.fit(TinyRNNRegressor(), adding_loader())
    assert calls == []


@pytest.mark.parametrize("clipper_first", [True, False])
def test_reading_the_clippers_record_needs_no_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clipper_first: bool
) -> None:
    # the clipper syncs once per step by design (its non-finite guard), so count only the monitor's calls
    tracker, clipper = _StepTracker(), AdaptiveGradientClipping(strategy="percentile")
    callbacks = [tracker, clipper, _monitor(3)] if clipper_first else [tracker, _monitor(3), clipper]
    trainer = quiet_trainer(tmp_path, max_steps=4, log_every_n_steps=3, callbacks=callbacks)
    calls = _count_syncs(monkeypatch, tracker, source=gradient_norm_monitor.__file__)
    trainer.fit(TinyRNNRegressor(), adding_loader())
    assert {step for step, _ in calls} == {2}
