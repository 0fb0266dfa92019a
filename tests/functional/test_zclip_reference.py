"""ZScoreClipper against the `zclip` package (the paper authors' implementation) on the same gradient stream.

`clip_rule="reciprocal"` is the package's default `mode="zscore"` (adaptive scaling) and `clip_rule="cap"` its
`mode="percentile"`; `max_grad_norm` is the package's argument of the same name. Thresholds where the package
clips, the clipped gradients and the EMA statistics agree to 1e-5 relative (the package computes in float64,
we in float32). Finite norms only: a NaN norm disables the package for good.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import pytest
import torch

from rnn_stability.functional import ZScoreClipper, clip_grads_with_norm_, force_sync_free, total_grad_norm

zclip = pytest.importorskip("zclip")

RULE_OF_MODE = {"zscore": "reciprocal", "percentile": "cap"}


def _norm_stream(seed: int, steps: int) -> list[float]:
    """Log-normal noise around a slow drift, with a spike (x5 to x50) on about 6 % of the steps."""
    rng = random.Random(seed)
    norms = []
    for step in range(steps):
        level = 1.0 + 0.5 * math.sin(step / 40)
        spike = rng.uniform(5, 50) if rng.random() < 0.06 else 1.0
        norms.append(level * math.exp(rng.gauss(0, 0.25)) * spike)
    return norms


def _set_grads(model: torch.nn.Module, norm: float, gen: torch.Generator) -> list[torch.Tensor]:
    grads = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    scale = norm / torch.cat([g.flatten() for g in grads]).norm().item()
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g * scale
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("max_grad_norm", [None, 1.2, 4.0])
@pytest.mark.parametrize("mode", ["zscore", "percentile"])
def test_thresholds_gradients_and_statistics_match_the_package(mode, max_grad_norm, sync_free):
    reference = zclip.ZClip(mode=mode, max_grad_norm=max_grad_norm)  # the published defaults otherwise
    applied: list[tuple[float, float]] = []  # (effective threshold, its total norm) whenever it decides
    decide = reference._apply_clipping

    def recording(model, clip_val, total_norm):
        effective = decide(model, clip_val, total_norm)
        applied.append((effective, total_norm))
        return effective

    reference._apply_clipping = recording
    ours = ZScoreClipper(clip_rule=RULE_OF_MODE[mode], max_grad_norm=max_grad_norm)
    theirs_model, our_model = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
    gen = torch.Generator().manual_seed(0)
    spikes_clipped = 0
    for step, norm in enumerate(_norm_stream(seed=1, steps=300)):
        grads = _set_grads(theirs_model, norm, gen)
        for p, g in zip(our_model.parameters(), grads, strict=True):
            p.grad = g.clone()
        decided = len(applied)
        reference.step(theirs_model)
        params = list(our_model.parameters())
        with force_sync_free() if sync_free else nullcontext():
            pre = total_grad_norm(params)
            threshold = ours.step(pre)
            clip_grads_with_norm_(params, threshold, pre)
        if len(applied) > decided and applied[-1][0] < applied[-1][1] * (1 - 1e-5):  # the package clipped
            assert threshold.item() == pytest.approx(applied[-1][0], rel=1e-5), step
            spikes_clipped += step >= ours.warmup_steps
        elif step < ours.warmup_steps and max_grad_norm is not None and pre.item() > max_grad_norm:
            assert threshold.item() == pytest.approx(max_grad_norm, rel=1e-6), step  # warm-up: the cap only
        else:
            assert threshold.item() >= pre.item() * (1 - 1e-5), step  # neither clips
        for theirs, mine in zip(theirs_model.parameters(), our_model.parameters(), strict=True):
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7 * norm)
        if reference.initialized:
            state = ours.state_dict()
            assert state["mean"] == pytest.approx(reference.mean, rel=1e-5), step
            assert state["var"] == pytest.approx(reference.var, rel=1e-4, abs=1e-9), step
    assert spikes_clipped >= 5  # the stream exercised the rule itself, not just the cap


def test_reciprocal_rule_clips_larger_spikes_harder():
    clipper = ZScoreClipper(alpha=0.9, z_threshold=2.0, warmup_steps=4, clip_rule="reciprocal")
    for norm in (1.0, 1.2, 0.8, 1.0):
        clipper.step(torch.tensor(norm))
    state = clipper.state_dict()
    mean, std = state["mean"], math.sqrt(state["var"])
    thresholds = []
    for spike in (2.0, 20.0):
        fresh = ZScoreClipper(alpha=0.9, z_threshold=2.0, warmup_steps=4, clip_rule="reciprocal")
        fresh.load_state_dict(state)
        thresholds.append(fresh.step(torch.tensor(spike)).item())
        score = (spike - mean) / (std + 1e-6)
        assert thresholds[-1] == pytest.approx(mean + 2.0 * std / (score / 2.0), rel=1e-5)
    assert (
        mean < thresholds[1] < thresholds[0] < mean + 2.0 * std
    )  # below the fixed cap, lower for a larger one
    assert clipper.step(torch.tensor(1.1)).item() >= 1.1  # not a spike: not clipped


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(clip_rule="adaptive"), ValueError, "`clip_rule` must be one of \\('cap', 'reciprocal'\\)"),
        (dict(clip_rule=1), TypeError, "`clip_rule`"),
        (dict(max_grad_norm=0.0), ValueError, "`max_grad_norm` must be a positive"),
        (dict(max_grad_norm="1"), TypeError, "`max_grad_norm`"),
    ],
)
def test_invalid_zclip_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        ZScoreClipper(**kwargs)
