"""Bad input raises torch's error type, with a message naming the argument, in every mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM, GRUCell, LSTMCell, convert_rnn

MODES = [{}, {"residual": True}, {"layer_norm": True}, {"layer_norm": True, "residual": True}]
PAIRS = [(LSTM, nn.LSTM), (GRU, nn.GRU)]


def _error(fn: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is compared with torch's below
        fn()
    return info.value


BAD_CALLS: dict[str, Callable[[Any, bool], Any]] = {
    "rank": lambda m, lstm: m(torch.randn(2, 3, 4, 5)),
    "feature size": lambda m, lstm: m(torch.randn(5, 2, 7)),
    "h0 shape": lambda m, lstm: m(
        torch.randn(5, 2, 3), (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)) if lstm else torch.zeros(2, 3, 4)
    ),
    "c0 shape": lambda m, lstm: (
        m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 5)))
        if lstm
        else m(torch.randn(5, 2, 3), torch.zeros(2, 2, 5))
    ),
    "h0 rank": lambda m, lstm: m(
        torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)) if lstm else torch.zeros(2, 4)
    ),
    "unbatched h0 rank": lambda m, lstm: m(
        torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4)) if lstm else torch.zeros(2, 1, 4)
    ),
    "dtype": lambda m, lstm: m(torch.randn(5, 2, 3, dtype=torch.float64)),
    "empty sequence": lambda m, lstm: m(torch.randn(0, 2, 3)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["LSTM", "GRU"])
def test_forward_errors_match_torch(ours: type, theirs: type, case: str) -> None:
    lstm = ours is LSTM
    expected = _error(lambda: BAD_CALLS[case](theirs(3, 4, 2), lstm))
    for mode in MODES:
        got = _error(lambda mode=mode: BAD_CALLS[case](ours(3, 4, 2, **mode), lstm))
        assert type(got) is type(expected), (mode, got, expected)
        if case in ("feature size", "dtype"):
            assert "input" in str(got)
        if "shape" in case:
            assert "hidden" in str(got)
        if case == "empty sequence":
            assert str(got) == str(expected)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["LSTM", "GRU"])
def test_empty_batch_gives_empty_outputs_like_torch(ours: type, theirs: type) -> None:
    """A batch of 0 sequences is valid for torch's kernels: outputs and states are empty, backward works."""
    x = torch.randn(5, 0, 3, requires_grad=True)
    expected, _ = theirs(3, 4, 2, bidirectional=True)(x)
    for mode in MODES:
        out, state = ours(3, 4, 2, bidirectional=True, **mode)(x)
        assert out.shape == expected.shape, mode
        for s in state if isinstance(state, tuple) else (state,):
            assert s.shape == (4, 0, 4), mode
        out.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape


CONSTRUCTOR_CASES: list[tuple[tuple, dict]] = [
    ((-1, 4), {}),
    ((3, 0), {}),
    ((3, 4, 0), {}),
    ((3, 4), {"dropout": 1.5}),
    ((3, 4), {"proj_size": 4}),
    ((3, 4), {"proj_size": -1}),
    ((3.0, 4), {}),
    ((3, 4), {"bias": 1}),
    ((3, 4), {"batch_first": "yes"}),
]


@pytest.mark.parametrize(("args", "kwargs"), CONSTRUCTOR_CASES)
@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["LSTM", "GRU"])
def test_constructor_errors_match_torch(ours: type, theirs: type, args: tuple, kwargs: dict) -> None:
    if "proj_size" in kwargs and ours is GRU:
        kwargs = {"proj_size": 2}
    expected = _error(lambda: theirs(*args, **kwargs))
    for mode in MODES:
        got = _error(lambda mode=mode: ours(*args, **kwargs, **mode))
        assert type(got) is type(expected)
        assert str(got) == str(expected)


@pytest.mark.parametrize(
    "factory", [lambda **o: LSTM(3, 4, **o), lambda **o: GRU(3, 4, **o), lambda **o: LSTMCell(3, 4, **o)]
)
def test_options_must_be_bool(factory: Callable[..., nn.Module]) -> None:
    with pytest.raises(TypeError, match="`layer_norm` must be a bool"):
        factory(layer_norm=1)
    with pytest.raises(ValueError, match="`layer_norm` must be True, False or one of 'recurrent', 'joint'"):
        factory(layer_norm="both")
    if not isinstance(factory(), nn.RNNCellBase):
        with pytest.raises(TypeError, match="`residual` must be a bool"):
            factory(residual="yes")


def test_convert_rnn_validates_arguments() -> None:
    with pytest.raises(TypeError, match="`module`"):
        convert_rnn("lstm")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`residual`"):
        convert_rnn(nn.LSTM(3, 4), residual=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ours", "theirs"), [(LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell)])
def test_cell_errors_match_torch(ours: type, theirs: type) -> None:
    lstm = ours is LSTMCell

    def state(b: int, h: int) -> Any:
        return (torch.zeros(b, h), torch.zeros(b, h)) if lstm else torch.zeros(b, h)

    calls: list[Callable[[nn.Module], Any]] = [
        lambda m: m(torch.randn(2, 2, 3)),
        lambda m: m(torch.randn(2, 5)),
        lambda m: m(torch.randn(2, 3), state(3, 4)),
        lambda m: m(torch.randn(2, 3), state(2, 5)),
        lambda m: m(torch.randn(2, 3, dtype=torch.float64)),
    ]
    for call in calls:
        expected = _error(lambda call=call: call(theirs(3, 4)))
        got = _error(lambda call=call: call(ours(3, 4, layer_norm=True)))
        assert type(got) is type(expected), (got, expected)
