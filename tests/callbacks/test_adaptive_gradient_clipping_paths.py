"""AdaptiveGradientClipping: the CPU's host-scalar path and the sync-free path train to the same weights; on CUDA
the sync-free path never synchronises (`torch.cuda.set_sync_debug_mode("error")`)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from rnn_stability.callbacks import AdaptiveGradientClipping
from rnn_stability.functional import (
    PercentileClipper,
    ZScoreClipper,
    adaptive_grad_clip_,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    force_sync_free,
    total_grad_norm,
)
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer

OPTIONS = [
    dict(strategy="norm", max_norm=0.05),
    dict(strategy="value", clip_value=0.01),
    dict(strategy="percentile", percentile=30.0, window_size=6),
    dict(strategy="zscore", alpha=0.5, warmup_steps=3, z_threshold=0.5),
    dict(
        strategy="zscore",
        alpha=0.5,
        warmup_steps=3,
        z_threshold=0.5,
        clip_rule="reciprocal",
        max_grad_norm=0.2,
    ),
    dict(strategy="agc", clip_factor=0.02),
]


class Decisions(Callback):
    """Every step's record, read after the clipper ran (the threshold and whether it clipped)."""

    def __init__(self, clipper: AdaptiveGradientClipping) -> None:
        self.clipper, self.seen = clipper, []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        record = self.clipper.last_record
        assert record is not None
        self.seen.append((record.threshold.item(), bool(record.clipped), record.post_clip_norm.item()))


def _fit(options: dict[str, Any], sync_free: bool):
    L.seed_everything(0, verbose=False)
    model, clipper = TinyRNNRegressor(), AdaptiveGradientClipping(**options)
    decisions = Decisions(clipper)
    trainer = quiet_trainer(max_steps=16, callbacks=[clipper, decisions])
    with force_sync_free() if sync_free else nullcontext():
        trainer.fit(model, adding_loader(num_samples=64, batch_size=8))
    return model, clipper, decisions.seen


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_both_paths_train_to_the_same_weights(options):
    host_model, host, host_seen = _fit(options, sync_free=False)
    device_model, device, device_seen = _fit(options, sync_free=True)
    assert host_seen == device_seen
    assert any(clipped for _, clipped, _ in host_seen)  # clipping happened, not just pass-through
    for a, b in zip(host_model.state_dict().values(), device_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert repr(host.state_dict()) == repr(device.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).cuda()
    params = list(model.parameters())
    clippers = [
        PercentileClipper(10.0, 50),
        ZScoreClipper(warmup_steps=3),
        ZScoreClipper(warmup_steps=3, clip_rule="reciprocal", max_grad_norm=1.0),
    ]
    inputs = torch.randn(8, 64, 16, device="cuda")
    torch.cuda.synchronize()
    for step, batch in enumerate(inputs):
        model.zero_grad()
        (model(batch).pow(2).mean() * (50.0 if step == 6 else 1.0)).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            clip_grad_norm_(params, 1.0)
            clip_grad_value_(params, 0.5)
            clip_grad_value_(params, torch.tensor(0.5, device="cuda"))
            adaptive_grad_clip_(params, 0.05)
            for clipper in clippers:
                pre = total_grad_norm(params)
                clip_grads_with_norm_(params, clipper.step(pre), pre)
                clipper.threshold()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p.grad).all() for p in params)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(clip_rule="mean"), ValueError, "`clip_rule` must be one of"),
        (dict(clip_rule=None), TypeError, "`clip_rule`"),
        (dict(max_grad_norm=-1.0), ValueError, "`max_grad_norm` must be a positive"),
        (dict(max_grad_norm="1.0"), TypeError, "`max_grad_norm`"),
    ],
)
def test_zclip_options_are_checked_by_the_callback(kwargs, error, message):
    with pytest.raises(error, match=message):
        AdaptiveGradientClipping(strategy="zscore", **kwargs)
    clipper = AdaptiveGradientClipping(strategy="zscore", clip_rule="reciprocal", max_grad_norm=2)
    assert (clipper.clip_rule, clipper.max_grad_norm) == ("reciprocal", 2.0)
