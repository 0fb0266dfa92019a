"""flow_statistics: decay rate by least squares, memory length, and the documented verdict rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_stability.functional import flow_statistics
from rnn_stability.functional.flow_statistics import VERDICT_CODES


def _geometric(factor: float, seq_len: int) -> torch.Tensor:
    """p_t = factor ** (T - 1 - t): multiplied by ``factor`` per step back from the end."""
    return factor ** torch.arange(seq_len - 1, -1, -1, dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(0.2, 3.0), seq_len=st.integers(2, 40), scale=st.floats(1e-6, 1e6))
def test_decay_rate_is_the_log_slope_and_scale_free(factor, seq_len, scale):
    stats = flow_statistics(scale * _geometric(factor, seq_len))
    assert stats.decay_rate == pytest.approx(-math.log(factor), abs=1e-6)
    assert stats.seq_len == seq_len
    assert stats.max_norm == pytest.approx(scale * max(1.0, factor ** (seq_len - 1)))


def test_memory_length_counts_back_to_the_earliest_step_above_threshold():
    profile = torch.tensor([0.0, 0.02, 0.001, 0.5, 1.0])
    assert flow_statistics(profile, threshold=0.01).memory_length == 4
    assert flow_statistics(profile, threshold=0.1).memory_length == 2
    assert flow_statistics(profile, threshold=1.0).memory_length == 1
    assert flow_statistics(torch.zeros(6)).memory_length == 0


def test_verdict_rule():
    # halves per step: 1% is reached after 7 steps back, 7 >= 0.5 * 10
    assert flow_statistics(_geometric(0.5, 10)).verdict == "healthy"
    assert flow_statistics(_geometric(0.5, 30)).verdict == "vanishing"
    assert flow_statistics(_geometric(0.5, 30), vanish_fraction=0.2).verdict == "healthy"
    # grows by 1.2 ** 19 ≈ 32 over the sequence
    assert flow_statistics(_geometric(1.2, 20)).verdict == "exploding"
    assert flow_statistics(_geometric(1.2, 20), explode_factor=100.0).verdict == "healthy"
    assert flow_statistics(torch.tensor([1.0, float("nan"), 1.0])).verdict == "exploding"
    assert flow_statistics(torch.tensor([float("inf"), 1.0])).verdict == "exploding"
    zero = flow_statistics(torch.zeros(5))
    assert zero.verdict == "vanishing" and math.isnan(zero.decay_rate)
    single = flow_statistics(torch.tensor([2.0]))
    assert (single.memory_length, single.verdict) == (1, "healthy")
    assert {s: VERDICT_CODES[s] for s in ("vanishing", "healthy", "exploding")} == {
        "vanishing": -1,
        "healthy": 0,
        "exploding": 1,
    }
    assert flow_statistics(_geometric(1.2, 20)).verdict_code == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"explode_factor": 1.0}, "explode_factor"),
        ({"vanish_fraction": -0.1}, "vanish_fraction"),
    ],
)
def test_flow_statistics_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flow_statistics(torch.ones(3), **kwargs)


def test_flow_statistics_rejects_bad_profiles():
    with pytest.raises(TypeError, match="profile"):
        flow_statistics([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="profile"):
        flow_statistics(torch.ones(2, 3))
    with pytest.raises(ValueError, match="profile"):
        flow_statistics(torch.ones(0))
