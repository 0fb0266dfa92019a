"""The non-finite skip survives every documented combination with Lightning's own clipping (real fits)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rnn_stability.callbacks import AdaptiveGradientClipping
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class _NaNAt(TinyRNNRegressor):
    """Puts NaN into `head.weight`'s gradient at the chosen optimizer steps (after the last micro-batch)."""

    def __init__(self, bad_steps: set[int]) -> None:
        super().__init__()
        self.bad_steps = bad_steps

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.bad_steps:
            self.head.weight.grad[0, 0] = math.nan


class _ManualNaNAt(_NaNAt):
    """Manual optimization that clips with `self.clip_gradients` before `opt.step()`, as Lightning documents."""

    def __init__(self, bad_steps: set[int], algorithm: str) -> None:
        super().__init__(bad_steps)
        self.automatic_optimization = False
        self.algorithm = algorithm

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm=self.algorithm)
        opt.step()
        return loss


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_skip_with_trainer_gradient_clipping(algorithm: str, accumulate: int) -> None:
    torch.manual_seed(0)
    model = _NaNAt({1, 2})
    clipper = AdaptiveGradientClipping(strategy="percentile")
    trainer = quiet_trainer(
        max_steps=4,
        callbacks=[clipper],
        gradient_clip_val=0.5,
        gradient_clip_algorithm=algorithm,
        accumulate_grad_batches=accumulate,
    )
    with pytest.warns(UserWarning, match="Lightning clips again"):
        trainer.fit(model, adding_loader())
    assert trainer.global_step == 4 and clipper.num_skipped_steps == 2
    assert trainer.optimizers[0].state[model.head.weight]["step"].item() == 2  # two real updates
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_skip_under_manual_optimization_with_clip_gradients(algorithm: str) -> None:
    torch.manual_seed(0)
    model = _ManualNaNAt({1}, algorithm)
    clipper = AdaptiveGradientClipping(strategy="norm", max_norm=1.0)
    trainer = quiet_trainer(max_steps=3, callbacks=[clipper])
    trainer.fit(model, adding_loader())
    assert trainer.global_step == 3 and clipper.num_skipped_steps == 1
    assert trainer.optimizers[0].state[model.head.weight]["step"].item() == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lightning_clipping_is_restored_after_fit() -> None:
    model = _NaNAt({0})
    trainer = quiet_trainer(
        max_steps=2,
        callbacks=[AdaptiveGradientClipping()],
        gradient_clip_val=0.5,
        gradient_clip_algorithm="value",
    )
    with pytest.warns(UserWarning, match="Lightning clips again"):
        trainer.fit(model, adding_loader())
    assert "clip_gradients" not in vars(trainer.precision_plugin)
