"""The CPU's host-scalar path and the accelerators' sync-free path give identical results on the same stream.

`force_sync_free` runs the sync-free path on the CPU; every comparison here is bitwise (NaN equal to NaN).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_stability.functional import (
    PercentileClipper,
    ZScoreClipper,
    adaptive_grad_clip_,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    force_sync_free,
    total_grad_norm,
    unitwise_norm,
    uses_host_scalars,
)

SETTINGS = settings(max_examples=40, deadline=None)
# norms as a training run meets them: ordinary, spikes, zero, huge, NaN and Inf
norm_st = st.one_of(
    st.floats(1e-3, 1e3),
    st.floats(1e3, 1e30),
    st.sampled_from([0.0, math.nan, math.inf]),
)
norms_st = st.lists(norm_st, min_size=1, max_size=60)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5))


def _params(seed: int, dtype: torch.dtype, bad: str = "") -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in [(7, 5), (5,), (3, 2, 4)]:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
        p.grad = (torch.randn(shape, generator=gen) * 3).to(dtype)
        params.append(p)
    if bad:
        params[1].grad[2] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[bad]
    return params


def test_the_rule():
    assert uses_host_scalars(torch.device("cpu"))
    for kind in ("cuda", "mps", "xla", "meta"):
        assert not uses_host_scalars(torch.device(kind))
    with force_sync_free():
        assert not uses_host_scalars(torch.device("cpu"))
        with force_sync_free():
            pass
        assert not uses_host_scalars(torch.device("cpu"))  # nested blocks restore the outer state
    assert uses_host_scalars(torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", ["", "nan", "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 4.0, 1e9, math.inf, "tensor", "tensor64"])
def test_clip_grad_norm_paths_agree(dtype, bad, max_norm):
    if max_norm == "tensor":
        max_norm = torch.tensor(2.5)
    elif max_norm == "tensor64":
        max_norm = torch.tensor(0.3, dtype=torch.float64)
    host, device = _params(0, dtype, bad), _params(0, dtype, bad)
    pre_h, post_h = clip_grad_norm_(host, max_norm)
    with force_sync_free():
        pre_d, post_d = clip_grad_norm_(device, max_norm)
    assert _same(pre_h, pre_d) and _same(post_h, post_d)
    assert all(_same(h.grad, d.grad) for h, d in zip(host, device, strict=True))


@pytest.mark.parametrize("norm_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_clip_grads_with_norm_paths_agree_on_given_norms(norm_dtype):
    for value in [0.0, 0.7, 3.0, 5.0, 1e20, math.nan, math.inf]:
        host, device = _params(1, torch.float32), _params(1, torch.float32)
        norm = torch.tensor(value, dtype=norm_dtype)
        post_h = clip_grads_with_norm_(host, 3.0, norm)
        with force_sync_free():
            post_d = clip_grads_with_norm_(device, 3.0, norm)
        assert _same(post_h, post_d), value
        assert all(_same(h.grad, d.grad) for h, d in zip(host, device, strict=True)), value


def test_unclipped_gradients_are_not_touched_on_the_cpu():
    params = _params(2, torch.float32)
    before = [p.grad.data_ptr() for p in params]
    versions = [p.grad._version for p in params]
    pre, post = clip_grad_norm_(params, 1e6)
    assert [p.grad._version for p in params] == versions  # no in-place write at all
    assert [p.grad.data_ptr() for p in params] == before and torch.equal(pre, post)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", ["", "nan", "inf", "-inf"])
@pytest.mark.parametrize("clip_value", [0.1, 1.7, 1e9, math.inf, "tensor"])
def test_clip_grad_value_paths_agree_and_match_torch(dtype, bad, clip_value):
    if clip_value == "tensor":
        clip_value = torch.tensor(0.3)
    host, device, reference = _params(3, dtype, bad), _params(3, dtype, bad), _params(3, dtype, bad)
    clip_grad_value_(host, clip_value)
    with force_sync_free():
        clip_grad_value_(device, clip_value)
    if float(clip_value) <= torch.finfo(dtype).max:  # torch refuses a bound beyond the dtype's range
        torch.nn.utils.clip_grad_value_(reference, float(clip_value))
    else:  # we clamp to the bound as a tensor of that dtype holds it, inf: nothing changes
        reference = _params(3, dtype, bad)
    for h, d, r in zip(host, device, reference, strict=True):
        assert _same(h.grad, d.grad) and _same(h.grad, r.grad)


def _run(clipper, norms, sync_free_at=()):
    out = []
    for i, norm in enumerate(norms):
        if i in sync_free_at:
            with force_sync_free():
                out.append((clipper.step(torch.tensor(norm)), clipper.threshold()))
        else:
            out.append((clipper.step(torch.tensor(norm)), clipper.threshold()))
    return out


def _assert_same_runs(a, b):
    for (step_a, now_a), (step_b, now_b) in zip(a, b, strict=True):
        assert _same(step_a, step_b) and _same(now_a, now_b)


@SETTINGS
@given(
    norms=norms_st,
    alpha=st.floats(0.5, 0.99),
    z=st.floats(0.3, 4.0),
    warmup=st.integers(2, 6),  # >= 2: one norm has no variance
    rule=st.sampled_from(["cap", "reciprocal"]),
    cap=st.sampled_from([None, 0.5, 3.0]),
)
def test_zscore_paths_agree(norms, alpha, z, warmup, rule, cap):
    def make():
        return ZScoreClipper(alpha, z, warmup, clip_rule=rule, max_grad_norm=cap)

    host, device, mixed = make(), make(), make()
    host_run = _run(host, norms)
    with force_sync_free():
        device_run = _run(device, norms)
    _assert_same_runs(host_run, device_run)
    assert repr(host.state_dict()) == repr(device.state_dict())
    # moving between the paths mid-stream (statistics carried over) changes nothing either
    _assert_same_runs(host_run, _run(mixed, norms, sync_free_at=set(range(len(norms) // 2))))


@SETTINGS
@given(norms=norms_st, percentile=st.floats(0.0, 100.0), window=st.integers(1, 12))
def test_percentile_paths_agree(norms, percentile, window):
    host, device, mixed = (PercentileClipper(percentile, window) for _ in range(3))
    host_run = _run(host, norms)
    with force_sync_free():
        device_run = _run(device, norms)
    _assert_same_runs(host_run, device_run)
    assert repr(host.state_dict()) == repr(device.state_dict())
    _assert_same_runs(host_run, _run(mixed, norms, sync_free_at=set(range(0, len(norms), 2))))


@pytest.mark.parametrize(
    "make",
    [
        lambda: PercentileClipper(30.0, 6),
        lambda: ZScoreClipper(0.9, 1.5, 3),
        lambda: ZScoreClipper(0.9, 1.5, 3, clip_rule="reciprocal", max_grad_norm=2.0),
    ],
)
def test_state_saved_on_one_path_resumes_on_the_other(make):
    norms = [0.5, 2.0, math.nan, 1.0, 3.0, 0.7, 9.0, math.inf, 1.1, 0.2, 4.0, 1.5, 0.9, 30.0]
    straight = make()
    expected = _run(straight, norms)
    for first_sync_free in (True, False):
        first = make()
        with force_sync_free() if first_sync_free else nullcontext():
            _run(first, norms[:6])
        resumed = make()
        with nullcontext() if first_sync_free else force_sync_free():
            resumed.load_state_dict(first.state_dict())
            _assert_same_runs(expected[6:], _run(resumed, norms[6:]))


@pytest.mark.parametrize("strategy", ["percentile", "zscore", "reciprocal"])
def test_a_recorded_gradient_stream_gives_identical_gradients(strategy):
    """A real LSTM's gradients, clipped step by step: the two paths stay bit-identical."""
    torch.manual_seed(0)
    model = torch.nn.LSTM(3, 8, num_layers=2)
    inputs = torch.randn(20, 6, 4, 3) * 2.0

    def make():
        if strategy == "percentile":
            return PercentileClipper(50.0, 8)
        return ZScoreClipper(0.8, 1.0, 3, clip_rule="cap" if strategy == "zscore" else "reciprocal")

    host, device = make(), make()
    clipped = 0
    for batch in inputs:
        model.zero_grad()
        out, _ = model(batch)
        (out.pow(2).sum() * torch.rand(()) * 20).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        params_h = _with_grads(model, grads)
        params_d = _with_grads(model, grads)
        pre = total_grad_norm(params_h)
        post_h = clip_grads_with_norm_(params_h, host.step(pre), pre)
        with force_sync_free():
            pre_d = total_grad_norm(params_d)
            post_d = clip_grads_with_norm_(params_d, device.step(pre_d), pre_d)
        assert _same(post_h, post_d)
        assert all(_same(a.grad, b.grad) for a, b in zip(params_h, params_d, strict=True))
        clipped += int(post_h.item() < pre.item())
    assert 0 < clipped < len(inputs)  # both branches of the decision were taken


def _with_grads(model: torch.nn.Module, grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def _agc_formula_(params: list[torch.nn.Parameter], clip_factor: float, eps: float) -> None:
    """AGC written straight from its definition (the implementation before the CPU fast paths)."""
    for p in params:
        max_norm = unitwise_norm(p.detach()).clamp(min=eps) * clip_factor
        grad_norm = unitwise_norm(p.grad)
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-6), 1.0)
        p.grad.mul_(scale.to(p.grad.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", ["", "nan", "inf"])
@pytest.mark.parametrize(
    ("clip_factor", "eps"), [(0.01, 1e-3), (1.0, 1e-3), (1e-3, 1e-3), (1e-4, 1e-3), (0.05, 1e-9)]
)
def test_agc_paths_agree_with_its_formula(dtype, bad, clip_factor, eps):
    host, device, formula = (_params(4, dtype, bad) for _ in range(3))
    for params in (host, device, formula):
        params[0].grad[1] = 0.0  # a unit without gradient
        params[2].grad[0] *= 1e-7  # a unit with a gradient below the 1e-6 floor
        params[2].data[0] = 0.0  # ...and zero weights (the ε floor)
    adaptive_grad_clip_(host, clip_factor, eps)
    with force_sync_free():
        adaptive_grad_clip_(device, clip_factor, eps)
    _agc_formula_(formula, clip_factor, eps)
    for h, d, f in zip(host, device, formula, strict=True):
        assert _same(h.grad, d.grad) and _same(h.grad, f.grad)
