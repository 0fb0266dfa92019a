"""Clipping by norm/value, AGC and the non-finite helpers: equivalence with torch, properties, validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_stability.functional import (
    adaptive_grad_clip_,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    discard_grads_,
    nonfinite_parameter_names,
    total_grad_norm,
)
from rnn_stability.functional.clipping import matches_any, unitwise_norm

SETTINGS = settings(max_examples=25, deadline=None)


def _params(shapes: list[tuple[int, ...]], seed: int, scale: float) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        p.grad = torch.randn(shape, generator=gen) * scale
        params.append(p)
    return params


shapes_st = st.lists(
    st.tuples(st.integers(1, 5), st.integers(1, 4)).map(lambda t: t if t[1] > 1 else (t[0],)),
    min_size=1,
    max_size=4,
)


@SETTINGS
@given(
    shapes=shapes_st, seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 1e2)
)
def test_clip_grad_norm_matches_torch_and_never_increases(shapes, seed, scale, max_norm):
    ours, theirs = _params(shapes, seed, scale), _params(shapes, seed, scale)
    before = [p.grad.clone() for p in ours]
    pre, post = clip_grad_norm_(ours, max_norm)
    torch_pre = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(pre, torch_pre)
    assert post.item() <= pre.item() * (1 + 1e-6)
    torch.testing.assert_close(post, total_grad_norm(ours), rtol=1e-4, atol=1e-6)
    if pre.item() <= max_norm:  # under the threshold: bit-identical
        assert all(torch.equal(p.grad, b) for p, b in zip(ours, before, strict=True))
    else:
        assert post.item() == pytest.approx(max_norm, rel=1e-4)
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p.grad, q.grad)


@SETTINGS
@given(
    shapes=shapes_st,
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e2),
    clip_value=st.floats(1e-2, 10.0),
)
def test_clip_grad_value_matches_torch_and_never_increases(shapes, seed, scale, clip_value):
    ours, theirs = _params(shapes, seed, scale), _params(shapes, seed, scale)
    before = [p.grad.clone() for p in ours]
    clip_grad_value_(ours, clip_value)
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for p, q, b in zip(ours, theirs, before, strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
        assert bool((p.grad.abs() <= b.abs()).all())
        untouched = b.abs() <= clip_value
        assert torch.equal(p.grad[untouched], b[untouched])


@SETTINGS
@given(
    shapes=shapes_st,
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-4, 10.0),
    clip_factor=st.floats(1e-3, 1.0),
)
def test_agc_never_increases_unit_norms_and_leaves_small_units(shapes, seed, scale, clip_factor):
    params = _params(shapes, seed, scale)
    before = [p.grad.clone() for p in params]
    adaptive_grad_clip_(params, clip_factor=clip_factor, eps=1e-3)
    for p, b in zip(params, before, strict=True):
        limit = unitwise_norm(p.detach()).clamp(min=1e-3) * clip_factor
        old, new = unitwise_norm(b), unitwise_norm(p.grad)
        assert bool((new <= old * (1 + 1e-5)).all())
        assert bool((new <= limit * (1 + 1e-4)).all())
        small = (old <= limit).expand_as(b)
        assert torch.equal(p.grad[small], b[small])


def test_agc_rows_of_a_matrix_are_units_and_exclude_uses_names():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 10.0
    head_before = model[1].weight.grad.clone()
    adaptive_grad_clip_(model.named_parameters(), clip_factor=0.01, exclude=["1"])
    assert torch.equal(model[1].weight.grad, head_before)  # excluded module
    row_norms = model[0].weight.grad.norm(dim=1)
    expected = model[0].weight.detach().norm(dim=1).clamp(min=1e-3) * 0.01
    torch.testing.assert_close(row_norms, expected)


def test_matches_any_patterns():
    assert matches_any("head.weight", ["head"])
    assert not matches_any("header.weight", ["head"])
    assert matches_any("rnn.bias_hh_l0", ["rnn.bias*"])
    assert not matches_any("rnn.weight_hh_l0", ["*.bias*"])


def test_clip_grads_with_norm_accepts_tensor_threshold_and_leaves_nan_alone():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    post = clip_grads_with_norm_([w], torch.tensor(2.5), torch.tensor(5.0))
    torch.testing.assert_close(post, torch.tensor(2.5), rtol=1e-5, atol=0)
    torch.testing.assert_close(w.grad, torch.tensor([1.5, 2.0]), rtol=1e-5, atol=0)
    w.grad = torch.tensor([1.0, math.nan])
    clip_grads_with_norm_([w], 1.0, torch.tensor(math.nan))
    assert w.grad[0].item() == 1.0


def test_low_precision_gradients_are_clipped_in_place():
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    w.grad = torch.full((4,), 2.0, dtype=torch.bfloat16)
    pre, post = clip_grad_norm_([w], 1.0)
    assert w.grad.dtype == torch.bfloat16
    assert pre.item() == pytest.approx(4.0)
    assert w.grad.float().norm().item() == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: clip_grad_norm_(p, -1.0), "`max_norm` must be a positive"),
        (lambda p: clip_grad_norm_(p, 1.0, norm_type=0), "`norm_type`"),
        (lambda p: clip_grad_norm_(p, torch.ones(2)), "`max_norm` must be a number or a 0-d tensor"),
        (lambda p: clip_grad_value_(p, 0.0), "`clip_value` must be a positive"),
        (lambda p: adaptive_grad_clip_(p, clip_factor=0.0), "`clip_factor` must be a positive"),
        (lambda p: adaptive_grad_clip_(p, eps=-1.0), "`eps` must be a positive"),
        (lambda p: adaptive_grad_clip_(p, exclude=["head"]), "`exclude` needs named parameters"),
    ],
)
def test_invalid_arguments_name_the_argument(call, message):
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match=message):
        call([w])
    with pytest.raises(TypeError, match="`exclude`"):
        adaptive_grad_clip_([("w", w)], exclude="head")
    with pytest.raises(TypeError, match="`max_norm`"):
        clip_grad_norm_([w], "1.0")  # type: ignore[arg-type]


def test_nonfinite_helpers():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([1.0, math.inf]), torch.ones(2)
    assert nonfinite_parameter_names([("a", a), ("b", b)]) == ["a"]
    big = torch.nn.Parameter(torch.zeros(2))
    big.grad = torch.tensor([3e38, 3e38])  # finite elements whose norm overflows float32
    assert nonfinite_parameter_names([("big", big)]) == ["big"]
    discard_grads_([a, b])
    assert a.grad is None and b.grad is None
    assert nonfinite_parameter_names([("a", a)]) == []


def test_float64_gradients_beyond_float32_range_are_clipped_like_torch():
    ours = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2)]
    theirs = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2)]
    for p in ours + theirs:
        p.grad = torch.tensor([1e38], dtype=torch.float64)
    pre, post = clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(pre, expected)
    assert post.item() == pytest.approx(1.0)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
        assert a.grad.item() == pytest.approx(1 / math.sqrt(2))
    named = [(f"p{i}", p) for i, p in enumerate(ours)]
    for p in ours:
        p.grad = torch.tensor([1e39], dtype=torch.float64)  # beyond float32, finite in float64
    assert nonfinite_parameter_names(named) == []


@pytest.mark.parametrize("bad", [-1.0, math.nan, -math.inf])
def test_tensor_thresholds_are_checked_on_the_cpu(bad):
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match="`max_norm` must be >= 0"):
        clip_grad_norm_([w], torch.tensor(bad))
    with pytest.raises(ValueError, match="`max_norm` must be >= 0"):
        clip_grads_with_norm_([w], torch.tensor(bad), torch.tensor(5.0))
    with pytest.raises(ValueError, match="`clip_value` must be >= 0"):
        clip_grad_value_([w], torch.tensor(bad))
    with pytest.raises(TypeError, match="`clip_value`"):
        clip_grad_value_([w], torch.tensor(True))
    assert w.grad.tolist() == [1.0, -2.0, 3.0]  # nothing was flipped or clamped to the wrong bound
    # zero and inf tensors stay valid: adaptive thresholds reach them (a window of zero norms, an empty one)
    clip_grad_norm_([w], torch.tensor(math.inf))
    assert w.grad.tolist() == [1.0, -2.0, 3.0]
    clip_grad_value_([w], torch.tensor(0.0))
    assert w.grad.tolist() == [0.0, 0.0, 0.0]


def test_clip_grads_with_norm_accepts_a_float_total_norm():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    post = clip_grads_with_norm_([w], 1.0, 5.0)
    assert post.item() == pytest.approx(1.0)
    assert w.grad.tolist() == pytest.approx([0.6, 0.8])
    with pytest.raises(TypeError, match="`total_norm`"):
        clip_grads_with_norm_([w], 1.0, "5")  # type: ignore[arg-type]


def test_agc_reads_a_generator_exclude_once():
    head, body = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    head.grad, body.grad = torch.full((2, 2), 10.0), torch.full((2, 2), 10.0)
    adaptive_grad_clip_([("body", body), ("head", head)], exclude=(name for name in ["head"]))
    assert torch.equal(head.grad, torch.full((2, 2), 10.0))  # excluded, though it comes second
    assert body.grad.norm(dim=1).max().item() == pytest.approx(0.01 * math.sqrt(2), rel=1e-5)
