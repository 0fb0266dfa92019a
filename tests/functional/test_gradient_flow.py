"""gradient_flow and GradientFlowRecorder: analytic profiles, layouts, packed sequences, cells, embeddings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from rnn_stability.data import adding_problem
from rnn_stability.functional import GradientFlowRecorder, flow_statistics, gradient_flow


def _linear_relu_rnn(size: int, a: float, batch_first: bool) -> nn.RNN:
    """h_t = relu(x_t + a h_{t-1}): linear for positive inputs, so ∂h_T/∂x_t = a^(T-1-t) I."""
    rnn = nn.RNN(size, size, nonlinearity="relu", bias=False, batch_first=batch_first)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(size))
        rnn.weight_hh_l0.copy_(a * torch.eye(size))
    return rnn


def _last_step_sum(batch_first: bool):
    return lambda out: (out[0][:, -1] if batch_first else out[0][-1]).sum()


@settings(max_examples=12, deadline=None)
@given(
    a=st.floats(0.3, 1.3),
    seq_len=st.integers(1, 9),
    batch=st.integers(1, 3),
    size=st.integers(1, 3),
    batch_first=st.booleans(),
)
def test_linear_rnn_profile_matches_analytic(a, seq_len, batch, size, batch_first):
    rnn = _linear_relu_rnn(size, a, batch_first)
    shape = (batch, seq_len, size) if batch_first else (seq_len, batch, size)
    x = torch.rand(shape, dtype=torch.float64).add_(0.1)
    rnn.double()
    expected = torch.tensor(
        [a ** (seq_len - 1 - t) * math.sqrt(batch * size) for t in range(seq_len)], dtype=torch.float64
    )

    profile = gradient_flow(rnn, x, _last_step_sum(batch_first))
    torch.testing.assert_close(profile.double(), expected, rtol=1e-5, atol=1e-7)
    assert profile.dtype == torch.float64

    recorder = GradientFlowRecorder({"rnn": rnn})
    with recorder:
        loss = _last_step_sum(batch_first)(rnn(x))
    loss.backward()
    recorded = recorder.profiles()["rnn"]
    assert recorded["input"].dtype == torch.float32
    torch.testing.assert_close(recorded["input"].double(), expected, rtol=1e-5, atol=1e-7)
    # the loss touches only the last output, so ∂L/∂y_t is zero before it
    expected_out = torch.zeros(seq_len, dtype=torch.float64)
    expected_out[-1] = math.sqrt(batch * size)
    torch.testing.assert_close(recorded["output"].double(), expected_out)

    if seq_len >= 2:
        stats = flow_statistics(expected, threshold=0.05)
        assert stats.decay_rate == pytest.approx(-math.log(a), abs=1e-6)
        peak = max(expected.tolist())
        earliest = next(t for t, v in enumerate(expected.tolist()) if v >= 0.05 * peak)
        assert stats.memory_length == seq_len - earliest


def test_gradient_flow_leaves_parameter_grads_untouched():
    lstm = nn.LSTM(2, 4, batch_first=True)
    lstm.weight_hh_l0.grad = torch.full_like(lstm.weight_hh_l0, 3.0)
    gradient_flow(lstm, torch.randn(2, 5, 2), lambda out: out[0].sum())
    assert torch.equal(lstm.weight_hh_l0.grad, torch.full_like(lstm.weight_hh_l0, 3.0))
    assert lstm.weight_ih_l0.grad is None


def _reference(module, x, time_dim, loss_weights):
    """Per-step norms of ∂L/∂x and ∂L/∂y from plain .backward() with retain_grad, step by step."""
    x = x.clone().requires_grad_()
    out, _ = module(x)
    out.retain_grad()
    (out * loss_weights).sum().backward()
    steps = x.shape[time_dim]
    norm = lambda g, t: g.select(time_dim, t).norm()  # noqa: E731
    return (
        torch.stack([norm(x.grad, t) for t in range(steps)]),
        torch.stack([norm(out.grad, t) for t in range(steps)]),
    )


@settings(max_examples=10, deadline=None)
@given(
    kind=st.sampled_from(["LSTM", "GRU", "RNN"]),
    batch_first=st.booleans(),
    bidirectional=st.booleans(),
    unbatched=st.booleans(),
    num_layers=st.integers(1, 2),
)
def test_recorder_matches_autograd_reference(kind, batch_first, bidirectional, unbatched, num_layers):
    torch.manual_seed(0)
    module = getattr(nn, kind)(
        3, 4, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional
    )
    seq_len, batch = 6, 2
    if unbatched:
        x, time_dim = torch.randn(seq_len, 3), 0
    else:
        x = torch.randn((batch, seq_len, 3) if batch_first else (seq_len, batch, 3))
        time_dim = 1 if batch_first else 0
    with torch.no_grad():
        weights = torch.randn_like(module(x)[0])
    expected_in, expected_out = _reference(module, x, time_dim, weights)

    recorder = GradientFlowRecorder({"m": module})
    with recorder:
        out, _ = module(x)
    assert not recorder.attached and not module._forward_pre_hooks and not module._forward_hooks
    (out * weights).sum().backward()
    profiles = recorder.profiles()["m"]
    torch.testing.assert_close(profiles["input"], expected_in)
    torch.testing.assert_close(profiles["output"], expected_out)
    torch.testing.assert_close(gradient_flow(module, x, lambda o: (o[0] * weights).sum()), expected_in)


def test_packed_sequences_give_zeros_past_each_end():
    torch.manual_seed(0)
    lstm = nn.LSTM(2, 5, batch_first=True)
    lengths = torch.tensor([3, 7, 5])
    x = torch.randn(3, 7, 2)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)

    def loss_fn(out):
        return out[1][0].sum()  # h_n: the last valid hidden state of each sequence

    per_sequence = gradient_flow(lstm, packed, loss_fn, per_sequence=True)
    assert per_sequence.shape == (3, 7)
    for b, length in enumerate(lengths.tolist()):
        assert torch.all(per_sequence[b, length:] == 0)
        assert torch.all(per_sequence[b, :length] > 0)
        # each packed sequence is independent: same profile as running it alone, unpadded
        alone = gradient_flow(lstm, x[b : b + 1, :length], loss_fn)
        torch.testing.assert_close(per_sequence[b, :length], alone)

    total = gradient_flow(lstm, packed, loss_fn)
    torch.testing.assert_close(total, per_sequence.square().sum(0).sqrt())

    recorder = GradientFlowRecorder({"lstm": lstm})
    with recorder:
        loss = loss_fn(lstm(packed))
    loss.backward()
    torch.testing.assert_close(recorder.profiles()["lstm"]["input"], total)


def test_recorder_sees_only_the_recurrent_path_of_inputs_that_require_grad():
    torch.manual_seed(0)
    embedding, lstm = nn.Embedding(10, 3), nn.LSTM(3, 4, batch_first=True)
    tokens = torch.randint(0, 10, (2, 6))

    def run():
        embedded = embedding(tokens)
        embedded.retain_grad()
        out, _ = lstm(embedded)
        # a skip connection around the LSTM: its gradient must not be counted as flow through the recurrence
        (out.sum() + 5.0 * embedded.sum()).backward()
        return embedded.grad

    total_grad = run()
    reference_weight_grad = embedding.weight.grad.clone()
    embedding.zero_grad(set_to_none=True)
    lstm.zero_grad(set_to_none=True)

    recorder = GradientFlowRecorder({"lstm": lstm})
    with recorder:
        embedded = embedding(tokens)
        out, _ = lstm(embedded)
    (out.sum() + 5.0 * embedded.sum()).backward()
    torch.testing.assert_close(embedding.weight.grad, reference_weight_grad)
    through_lstm = total_grad - 5.0
    expected = through_lstm.norm(dim=(0, 2))
    torch.testing.assert_close(recorder.profiles()["lstm"]["input"], expected)


def test_recorder_counts_cell_calls_as_time_steps_and_accumulates_passes():
    torch.manual_seed(0)
    cell = nn.LSTMCell(2, 3)
    xs = torch.randn(4, 2, 2, requires_grad=True)

    def forward():
        h = c = torch.zeros(2, 3)
        for t in range(4):
            h, c = cell(xs[t], (h, c))
        return h.sum()

    forward().backward()
    expected = xs.grad.norm(dim=(1, 2))
    xs.grad = None

    recorder = GradientFlowRecorder({"cell": cell})
    for _ in range(2):  # two micro-batches: squares add up
        with recorder:
            loss = forward()
        loss.backward()
    profiles = recorder.profiles()["cell"]
    torch.testing.assert_close(profiles["input"], expected * math.sqrt(2))
    assert profiles["output"].shape == (4,)
    recorder.reset()
    assert recorder.profiles() == {}


def test_recorder_divides_out_the_loss_scale():
    torch.manual_seed(0)
    gru = nn.GRU(2, 3)
    x = torch.randn(5, 2, 2)
    plain = gradient_flow(gru, x, lambda out: out[0].sum())
    recorder = GradientFlowRecorder({"gru": gru})
    recorder.scale = 1024.0
    with recorder:
        loss = gru(x)[0].sum() * 1024.0
    loss.backward()
    torch.testing.assert_close(recorder.profiles()["gru"]["input"], plain)


def test_half_precision_gradients_are_measured_in_float32():
    torch.manual_seed(0)
    gru = nn.GRU(2, 3).to(torch.bfloat16)
    x = torch.randn(5, 2, 2, dtype=torch.bfloat16)
    profile = gradient_flow(gru, x, lambda out: out[0].float().sum() * 1e30)
    assert profile.dtype == torch.float32
    assert torch.isfinite(profile).all()  # the squares (~1e60) overflow bfloat16 and float32
    reference = gradient_flow(gru.float(), x.float(), lambda out: out[0].sum() * 1e30)
    torch.testing.assert_close(profile, reference, rtol=0.1, atol=0.0)


def test_recorder_ignores_no_grad_forward():
    lstm = nn.LSTM(2, 3)
    recorder = GradientFlowRecorder({"lstm": lstm})
    with recorder, torch.no_grad():
        lstm(torch.randn(4, 1, 2))
    assert recorder.profiles() == {}


def _forget_bias(lstm: nn.LSTM, value: float) -> None:
    hidden = lstm.hidden_size
    with torch.no_grad():
        lstm.bias_ih_l0.zero_()
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0[hidden : 2 * hidden] = value


def _chrono(lstm: nn.LSTM, max_timescale: float) -> None:
    try:
        from rnn_stability.functional import chrono_  # type: ignore[attr-defined]
    except ImportError:  # issue 5 not merged: the formula of Tallec & Ollivier (2018) by hand
        hidden = lstm.hidden_size
        forget = torch.log(torch.empty(hidden).uniform_(1, max_timescale - 1))
        with torch.no_grad():
            lstm.bias_ih_l0.zero_()
            lstm.bias_hh_l0.zero_()
            lstm.bias_ih_l0[hidden : 2 * hidden] = forget
            lstm.bias_ih_l0[:hidden] = -forget
        return
    chrono_(lstm, max_timescale)


def test_chrono_init_has_longer_memory_than_tiny_forget_bias():
    torch.manual_seed(0)
    seq_len = 60
    x, _ = adding_problem(32, seq_len, generator=torch.Generator().manual_seed(0))
    lengths = {}
    for name, init in (("chrono", lambda m: _chrono(m, seq_len)), ("tiny", lambda m: _forget_bias(m, -5.0))):
        torch.manual_seed(1)
        lstm = nn.LSTM(2, 32, batch_first=True)
        init(lstm)
        profile = gradient_flow(lstm, x, lambda out: out[0][:, -1].sum())
        lengths[name] = flow_statistics(profile, threshold=0.01)
    assert lengths["tiny"].memory_length <= 5
    assert lengths["tiny"].verdict == "vanishing"
    assert lengths["chrono"].memory_length > 4 * lengths["tiny"].memory_length


def test_gradient_flow_rejects_bad_arguments():
    lstm = nn.LSTM(2, 3)
    with pytest.raises(TypeError, match="inputs"):
        gradient_flow(lstm, torch.ones(3, 2, dtype=torch.long), lambda out: out[0].sum())
    with pytest.raises(ValueError, match="inputs"):
        gradient_flow(lstm, torch.ones(2, 3, 4, 2), lambda out: out[0].sum())
    with pytest.raises(TypeError, match="loss_fn"):
        gradient_flow(lstm, torch.ones(3, 2), "sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        gradient_flow(lstm, torch.ones(3, 1, 2), lambda out: out[0])
    with pytest.raises(ValueError, match="batch_first"):
        gradient_flow(nn.Linear(2, 2), torch.ones(3, 1, 2), lambda out: out.sum())
    with pytest.raises(TypeError, match="modules"):
        GradientFlowRecorder({"linear": nn.Linear(2, 2)})


def test_gradient_flow_of_a_whole_model_reads_batch_first_from_its_rnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3))
    lstm = nn.LSTM(3, 4, batch_first=True)
    model.append(lstm)
    x = torch.randn(2, 5, 2)
    profile = gradient_flow(model, x, lambda out: out[0][:, -1].sum())
    assert profile.shape == (5,)
    assert gradient_flow(model, x, lambda out: out[0][:, -1].sum(), batch_first=False).shape == (2,)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recorder_works_with_our_recurrent_modules(kind):
    ours = pytest.importorskip("rnn_stability.nn")
    torch.manual_seed(0)
    module = getattr(ours, kind)(3, 4, num_layers=2, batch_first=True, bidirectional=True, layer_norm=True)
    assert isinstance(module, nn.RNNBase)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        weights = torch.randn_like(module(x)[0])
    expected_in, expected_out = _reference(module, x, 1, weights)
    recorder = GradientFlowRecorder({"m": module})
    with recorder:
        out, _ = module(x)
    (out * weights).sum().backward()
    torch.testing.assert_close(recorder.profiles()["m"]["input"], expected_in)
    torch.testing.assert_close(recorder.profiles()["m"]["output"], expected_out)
