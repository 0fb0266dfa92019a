"""AutoClip (PercentileClipper) and ZClip (ZScoreClipper): reference values, properties, state round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_stability.functional import (
    AutoClip,
    PercentileClipper,
    ZClip,
    ZScoreClipper,
    clip_grads_with_norm_,
)

SETTINGS = settings(max_examples=25, deadline=None)
norms_st = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=40)


def test_aliases_name_the_papers():
    assert AutoClip is PercentileClipper and ZClip is ZScoreClipper


@SETTINGS
@given(norms=norms_st, percentile=st.floats(0.0, 100.0), window=st.integers(1, 12))
def test_percentile_matches_numpy_over_the_window(norms, percentile, window):
    clipper = PercentileClipper(percentile=percentile, window_size=window)
    for i, norm in enumerate(norms):
        threshold = clipper.step(torch.tensor(norm))
        history = np.array(norms[max(0, i + 1 - window) : i + 1], dtype=np.float32)
        assert threshold.item() == pytest.approx(float(np.percentile(history, percentile)), rel=1e-5)


def test_percentile_ignores_nonfinite_norms():
    clipper = PercentileClipper(percentile=100.0, window_size=10)
    assert math.isinf(clipper.threshold().item())
    clipper.step(torch.tensor(math.nan))
    assert math.isinf(clipper.threshold().item())  # nothing finite seen: no clipping
    for x in (1.0, math.inf, 2.0, math.nan):
        clipper.step(torch.tensor(x))
    assert clipper.threshold().item() == 2.0


def _zclip_reference(norms, alpha, z, warmup):
    """Straight-line float64 re-derivation of ZClip's fixed-cap rule (finite norms only)."""
    thresholds, seen, mean, var = [], [], 0.0, 0.0
    for g in norms:
        if len(seen) < warmup:
            thresholds.append(math.inf)
            if math.isfinite(g):
                seen.append(g)
                mean = float(np.mean(seen))
                var = float(np.var(seen))
            continue
        cap = mean + z * math.sqrt(var)
        thresholds.append(cap)
        if math.isfinite(g):
            clipped = min(g, cap)
            mean = alpha * mean + (1 - alpha) * clipped
            var = alpha * var + (1 - alpha) * (clipped - mean) ** 2
    return thresholds


@SETTINGS
@given(
    norms=st.lists(
        st.one_of(st.floats(1e-2, 1e2), st.just(math.nan), st.just(math.inf)), min_size=1, max_size=40
    ),
    alpha=st.floats(0.5, 0.99),
    z=st.floats(0.5, 4.0),
    warmup=st.integers(2, 6),  # >= 2: one norm has no variance
)
def test_zscore_matches_reference(norms, alpha, z, warmup):
    clipper = ZScoreClipper(alpha=alpha, z_threshold=z, warmup_steps=warmup)
    expected = _zclip_reference(norms, alpha, z, warmup)
    for norm, want in zip(norms, expected, strict=True):
        got = clipper.step(torch.tensor(norm)).item()
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


@SETTINGS
@given(norms=norms_st, percentile=st.floats(0.0, 100.0), seed=st.integers(0, 1000))
def test_adaptive_thresholds_never_increase_a_norm(norms, percentile, seed):
    for clipper in (PercentileClipper(percentile, 8), ZScoreClipper(0.9, 1.0, 2)):
        gen = torch.Generator().manual_seed(seed)
        for norm in norms:
            w = torch.nn.Parameter(torch.zeros(3))
            w.grad = torch.randn(3, generator=gen)
            w.grad *= norm / w.grad.norm()
            before = w.grad.clone()
            pre = w.grad.norm()
            post = clip_grads_with_norm_([w], clipper.step(pre), pre)
            assert post.item() <= pre.item()
            if pre.item() <= clipper.threshold().item() and post.item() == pre.item():
                assert torch.equal(w.grad, before)


@pytest.mark.parametrize("make", [lambda: PercentileClipper(25.0, 5), lambda: ZScoreClipper(0.9, 2.0, 3)])
def test_state_dict_round_trip_gives_identical_thresholds(make):
    norms = [0.5, 2.0, math.nan, 1.0, 3.0, 0.7, 9.0, 1.1, 0.2, 4.0, 1.5, 0.9]
    straight, first = make(), make()
    for x in norms[:6]:
        straight.step(torch.tensor(x))
        first.step(torch.tensor(x))
    state = first.state_dict()
    assert all(isinstance(v, (int, float, list)) for v in state.values())
    resumed = make()
    resumed.load_state_dict(state)
    for x in norms[6:]:
        assert torch.equal(straight.step(torch.tensor(x)), resumed.step(torch.tensor(x)))
    assert repr(straight.state_dict()) == repr(resumed.state_dict())  # repr: NaN == NaN


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PercentileClipper(percentile=101.0), "`percentile` must be a float in \\[0.0, 100.0\\]"),
        (lambda: PercentileClipper(window_size=0), "`window_size` must be a positive int"),
        (lambda: ZScoreClipper(alpha=1.0), "`alpha` must be a float in \\(0"),
        (lambda: ZScoreClipper(alpha=0.0), "`alpha` must be a float in \\(0"),
        (lambda: ZScoreClipper(z_threshold=0.0), "`z_threshold` must be a positive"),
        (lambda: ZScoreClipper(warmup_steps=0), "`warmup_steps` must be a positive int"),
    ],
)
def test_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="`window_size`"):
        PercentileClipper(window_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`alpha`"):
        ZScoreClipper(alpha="0.9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`state_dict\\['window'\\]`"):
        PercentileClipper(window_size=2).load_state_dict({"window": [1.0, 2.0, 3.0]})


def test_zscore_warmup_needs_two_norms():
    # with one warm-up norm sigma is 0, so every later norm above the mean was clipped to it, even at z = 1e6
    with pytest.raises(ValueError, match="`warmup_steps` must be an int >= 2"):
        ZScoreClipper(warmup_steps=1, z_threshold=1e6)
    clipper = ZScoreClipper(warmup_steps=2, z_threshold=1e6)
    for x in (1.0, 2.0):
        clipper.step(torch.tensor(x))
    assert clipper.step(torch.tensor(3.0)).item() > 1e5  # a huge z is no clipping at all


@pytest.mark.parametrize("make", [PercentileClipper, ZScoreClipper], ids=["percentile", "zscore"])
def test_clippers_take_float_norms_and_name_bad_ones(make):
    as_float, as_tensor = make(), make()
    for x in (1.0, 2.0, 3.0, 40.0):
        assert torch.equal(as_float.step(x), as_tensor.step(torch.tensor(x)))
    with pytest.raises(TypeError, match="`total_norm`"):
        make().step("1.0")
    with pytest.raises(ValueError, match="`total_norm`"):
        make().step(torch.ones(2))
    with pytest.raises(ValueError, match="`state_dict`"):
        make().load_state_dict({})
    with pytest.raises(TypeError, match="`state_dict`"):
        make().load_state_dict([1.0])
