"""flow_statistics: robust decay rate, memory length, and the verdict on task-dependent and exploding recurrences."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnn_stability.data import adding_problem
from rnn_stability.functional import GradientFlowRecorder, flow_statistics, gradient_flow
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


def _least_squares_growth(profile: torch.Tensor) -> float:
    """ln of the growth over the sequence by an ordinary least-squares fit (the rule before the robust one)."""
    log_p = profile.double().log()
    d = torch.arange(profile.numel() - 1, -1, -1, dtype=torch.float64)
    d = d - d.mean()
    return float((d * (log_p - log_p.mean())).sum() / d.square().sum()) * (profile.numel() - 1)


def _first_inputs_memoriser(num_kept: int, seq_len: int = 20) -> tuple[nn.LSTM, torch.Tensor, torch.Tensor]:
    """An LSTM built to solve "output the first `num_kept` inputs at the end", with its data.

    Channel 0 carries the values, channel 1 + u marks step u. Cell u opens its input gate only at its
    marked step, then holds (forget gate ≈ 1, no recurrent weights): the state gradient neither grows nor
    shrinks, and ∂L/∂x_t is large exactly at the `num_kept` steps the target depends on.
    """
    lstm = nn.LSTM(1 + num_kept, num_kept, batch_first=True)
    gate = 10.0  # sigmoid(±10): a gate fully open or closed
    with torch.no_grad():
        for weights in lstm.parameters():
            weights.zero_()
        input_gate, forget_gate, candidate, output_gate = (
            slice(k * num_kept, (k + 1) * num_kept) for k in range(4)
        )
        units = torch.arange(num_kept)
        lstm.weight_ih_l0[input_gate][units, 1 + units] = 2 * gate
        lstm.bias_ih_l0[input_gate] = -gate
        lstm.bias_ih_l0[forget_gate] = gate
        lstm.weight_ih_l0[candidate][:, 0] = 0.1  # small: tanh stays nearly linear
        lstm.bias_ih_l0[output_gate] = gate
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(256, seq_len, 1, generator=generator)
    markers = torch.zeros(256, seq_len, num_kept)
    markers[:, units, units] = 1.0
    return lstm, torch.cat([values, markers], dim=-1), values[:, :num_kept, 0]


@pytest.mark.parametrize(("num_kept", "seq_len"), [(1, 10), (4, 20)])
def test_growth_towards_the_inputs_the_task_needs_is_not_exploding(num_kept, seq_len):
    lstm, x, target = _first_inputs_memoriser(num_kept, seq_len)
    # a least-squares read-out: the task is solved up to the tanh curvature
    with torch.no_grad():
        h_last = lstm(x)[0][:, -1]
        readout = torch.linalg.lstsq(h_last, target).solution
    loss = torch.nn.functional.mse_loss(h_last @ readout, target).item()
    assert loss < 0.01
    profile = gradient_flow(
        lstm, x, lambda out: torch.nn.functional.mse_loss(out[0][:, -1] @ readout, target)
    )
    # ∂L/∂x_t is orders of magnitude larger at the remembered steps than anywhere else...
    assert float(profile[:num_kept].min()) > 100 * float(profile[num_kept:].max())
    # ...which a least-squares fit of ln p reads as growth far beyond explode_factor (the old verdict)
    assert _least_squares_growth(profile) > math.log(10.0)
    stats = flow_statistics(profile)
    assert stats.verdict == "healthy"
    assert abs(stats.decay_rate) * (profile.numel() - 1) < math.log(10.0)
    assert stats.memory_length == profile.numel()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_recurrent_weight_scaled_by_three_explodes(seed):
    torch.manual_seed(seed)
    rnn, head = nn.RNN(2, 32, batch_first=True), nn.Linear(32, 1)  # tanh, untrained
    x, y = adding_problem(64, 100, generator=torch.Generator().manual_seed(seed))

    def verdict() -> str:
        profile = gradient_flow(rnn, x, lambda out: torch.nn.functional.mse_loss(head(out[0][:, -1]), y))
        return flow_statistics(profile).verdict

    assert verdict() == "vanishing"  # torch's initialisation contracts
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(3.0)
    assert verdict() == "exploding"  # spectral radius ≈ 1.7: the Jacobians' product grows at every step


def test_decay_rate_ignores_a_minority_of_outlying_steps():
    profile = _geometric(0.5, 40)  # halves per step back: decay rate ln 2
    profile[:8] = 1e6  # 20 % of the steps, far above the rest
    assert flow_statistics(profile).decay_rate == pytest.approx(math.log(2.0), rel=0.1)
    long = flow_statistics(_geometric(1.001, 5000))  # fitted on a subsample of the steps
    assert long.decay_rate == pytest.approx(-math.log(1.001), rel=1e-6)


def test_a_loss_at_every_step_adds_up_without_exploding():
    # a recurrence that neither amplifies nor forgets, and a loss at each of its 60 steps: ∂L/∂x_t sums the
    # gradient of every later loss, so it grows going back — by accumulation, not by explosion
    lstm, x, _ = _first_inputs_memoriser(1, seq_len=60)
    with torch.no_grad():
        lstm.weight_ih_l0.zero_()
        lstm.bias_ih_l0[:1] = 10.0  # input gate always open: every input is added to the cell
        lstm.weight_ih_l0[2:3, 0] = 0.1
    recorder = GradientFlowRecorder({"lstm": lstm})
    with recorder:
        out, _ = lstm(x)
    out.square().sum().backward()  # a loss on the output of every step
    kinds = recorder.profiles()["lstm"]
    assert float(kinds["input"][0]) > 10 * float(kinds["input"][-1])
    raw = flow_statistics(kinds["input"])  # read alone, the sum looks like growth
    stats = flow_statistics(kinds["input"], output_profile=kinds["output"])
    assert raw.decay_rate < 0 and abs(stats.decay_rate) < abs(raw.decay_rate) / 10
    assert stats.verdict == "healthy"


@pytest.mark.parametrize(
    "output_profile", [torch.ones(4), torch.ones(3, 1), -torch.ones(3), torch.ones(3, dtype=torch.bool)]
)
def test_output_profile_must_be_norms_of_the_same_length(output_profile):
    with pytest.raises(ValueError, match="output_profile"):
        flow_statistics(torch.ones(3), output_profile=output_profile)
