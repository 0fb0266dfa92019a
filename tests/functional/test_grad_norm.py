"""Per-tensor and total gradient norms against torch's ``clip_grad_norm_`` and ``vector_norm``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_stability.functional import foreach_norms, grad_norms, nonfinite_count, total_grad_norm, total_norm


def _parameters(sizes: list[int], seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for size in sizes:
        p = torch.zeros(size, dtype=dtype, requires_grad=True)
        p.grad = torch.randn(size, generator=generator).to(dtype)
        params.append(p)
    return params


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=5),
    st.integers(0, 2**16),
    st.sampled_from([1.0, 2.0, 3.5, math.inf]),
)
def test_total_grad_norm_equals_clip_grad_norm(sizes: list[int], seed: int, norm_type: float) -> None:
    params = _parameters(sizes, seed)
    expected = torch.nn.utils.clip_grad_norm_(params, math.inf, norm_type=norm_type)
    assert total_grad_norm(params, norm_type).item() == pytest.approx(expected.item(), rel=1e-5)
    per_tensor = [torch.linalg.vector_norm(p.grad, norm_type).item() for p in params]
    assert [n.item() for n in grad_norms(params, norm_type)] == pytest.approx(per_tensor, rel=1e-5)


def test_low_precision_is_measured_in_float32() -> None:
    big = torch.full((4,), 6e4, dtype=torch.float16)  # squares overflow float16
    (norm,) = foreach_norms([big])
    assert norm.dtype == torch.float32 and norm.item() == pytest.approx(1.2e5)


def test_mixed_dtypes_keep_input_order() -> None:
    tensors = [torch.ones(4), torch.ones(1, dtype=torch.float64) * 3, torch.ones(9, dtype=torch.bfloat16)]
    assert [n.item() for n in foreach_norms(tensors)] == [2.0, 3.0, 3.0]


def test_parameters_without_grad_are_skipped_and_empty_is_zero() -> None:
    with_grad, without = _parameters([3], 0)[0], torch.zeros(2, requires_grad=True)
    assert len(grad_norms([with_grad, without])) == 1
    assert total_grad_norm([without]).item() == 0.0
    assert total_norm([]).item() == 0.0
    assert nonfinite_count([without]).item() == 0


def test_nonfinite_count_counts_nan_and_inf() -> None:
    a, b = _parameters([4, 3], 1)
    a.grad[0] = math.nan
    b.grad[1:] = -math.inf
    assert nonfinite_count([a, b]).item() == 3
    assert math.isnan(total_grad_norm([a, b]).item())


@pytest.mark.parametrize("norm_type", [0.0, -2.0, math.nan])
def test_invalid_norm_type(norm_type: float) -> None:
    with pytest.raises(ValueError, match="norm_type"):
        foreach_norms([torch.ones(1)], norm_type)


def test_float64_norms_beyond_float32_range_stay_finite() -> None:
    # float64 gradients of 1e38: the total norm (4e38) is finite in float64 but overflowed to inf when the
    # per-tensor norms were combined in float32
    grads = [torch.full((4,), 1e38, dtype=torch.float64), torch.full((4,), 1e38, dtype=torch.float64)]
    params = []
    for grad in grads:
        p = torch.zeros_like(grad, requires_grad=True)
        p.grad = grad.clone()
        params.append(p)
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    got = total_grad_norm(params)
    assert got.dtype == torch.float64 and torch.isfinite(got)
    torch.testing.assert_close(got, expected)
    big = [torch.tensor(1e150, dtype=torch.float64)] * 2
    assert total_norm(big).item() == pytest.approx(math.sqrt(2) * 1e150)
    # mixed float32/float64 promotes as torch does; float32 alone stays float32
    assert total_norm([torch.tensor(3.0), torch.tensor(4.0, dtype=torch.float64)]).dtype == torch.float64
    assert total_norm([torch.tensor(3.0), torch.tensor(4.0)]).dtype == torch.float32
