"""Our LSTM / GRU against torch's (options off: bit-identical) and the naive reference (all options; `True` is
the default layer-norm variant, the others are named)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from rnn_stability.nn import GRU, LSTM
from tests.nn.inputs import Case, flatten_output, make_case
from tests.nn.naive_reference import reference_forward

ATOL = 1e-6

configs = st.fixed_dictionaries(
    {
        "lstm": st.booleans(),
        "num_layers": st.integers(1, 2),
        "bidirectional": st.booleans(),
        "batch_first": st.booleans(),
        "proj": st.booleans(),
        "bias": st.booleans(),
        "packed": st.booleans(),
        "with_h0": st.booleans(),
        "unbatched": st.booleans(),
        "input_size": st.sampled_from([3, 4]),
    }
)


def build(cfg: dict, **options: bool | str) -> nn.RNNBase:
    cls = LSTM if cfg["lstm"] else GRU
    kwargs = dict(
        num_layers=cfg["num_layers"],
        bias=cfg["bias"],
        batch_first=cfg["batch_first"],
        bidirectional=cfg["bidirectional"],
        dtype=torch.float64,
    )
    if cfg["lstm"] and cfg["proj"]:
        kwargs["proj_size"] = 2
    hidden = 4 // (2 if cfg["bidirectional"] else 1) if cfg["input_size"] == 4 else 3
    module = cls(cfg["input_size"], max(hidden, 3), **kwargs, **options)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.7, 0.7)  # non-trivial layer-norm gains too
    return module.eval()


def weighted_loss(outputs: list[Tensor], state: tuple[Tensor, ...]) -> Tensor:
    """A loss that weights every output position differently, so that misplaced gradients show."""
    total = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs)
    return total + sum((s * 0.3).sum() for s in state)


def grads(loss: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, tensors, allow_unused=True))


def _case(module: nn.RNNBase, cfg: dict, seed: int) -> Case:
    return make_case(
        module,
        batch=3,
        steps=4,
        packed=cfg["packed"] and not cfg["unbatched"],
        with_h0=cfg["with_h0"],
        unbatched=cfg["unbatched"],
        seed=seed,
    )


def run(module: nn.RNNBase, cfg: dict, seed: int) -> tuple[list[Tensor], tuple[Tensor, ...], list[Tensor]]:
    case = _case(module, cfg, seed)
    outs, state = flatten_output(module(case.input, case.hx), case, cfg["batch_first"])
    loss = weighted_loss(outs, state)
    return outs, state, grads(loss, case.leaves + list(module.parameters()))


@settings(max_examples=25, deadline=None)
@given(cfg=configs, seed=st.integers(0, 3))
def test_options_off_bit_identical_to_torch(cfg: dict, seed: int) -> None:
    ours = build(cfg)
    theirs = (nn.LSTM if cfg["lstm"] else nn.GRU)(
        ours.input_size,
        ours.hidden_size,
        ours.num_layers,
        ours.bias,
        ours.batch_first,
        0.0,
        ours.bidirectional,
        **({"proj_size": ours.proj_size} if cfg["lstm"] else {}),
        dtype=torch.float64,
    )
    theirs.load_state_dict(ours.state_dict())
    a_out, a_state, a_grads = run(ours, cfg, seed)
    b_out, b_state, b_grads = run(theirs.eval(), cfg, seed)
    for a, b in zip(a_out + list(a_state) + a_grads, b_out + list(b_state) + b_grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("layer_norm", "residual"),
    [
        (False, True),
        (True, False),
        (True, True),
        ("recurrent", True),
        ("separate", False),
        ("separate", True),
    ],
)
@settings(max_examples=12, deadline=None)
@given(cfg=configs, seed=st.integers(0, 3))
def test_options_match_naive_reference(layer_norm: bool | str, residual: bool, cfg: dict, seed: int) -> None:
    module = build(cfg, layer_norm=layer_norm, residual=residual)
    outs, state, module_grads = run(module, cfg, seed)
    case = _case(module, cfg, seed)
    ref_outs, ref_state = reference_forward(module, case.sequences, case.state)
    ref_grads = grads(weighted_loss(ref_outs, ref_state), case.leaves + list(module.parameters()))
    for a, b in zip(outs + list(state), ref_outs + list(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for a, b in zip(module_grads, ref_grads, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_residual_without_matching_layer_is_torch(cls: type[nn.RNNBase]) -> None:
    """No layer qualifies (input 3 -> hidden 5, one layer): the per-layer native path equals torch exactly."""
    torch.manual_seed(0)
    ours = cls(3, 5, residual=True)
    assert ours.residual_layers() == []
    theirs = (nn.LSTM if cls is LSTM else nn.GRU)(3, 5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 3)
    assert torch.equal(ours(x)[0], theirs(x)[0])


def test_residual_layers_documented_rule() -> None:
    assert LSTM(4, 4, 3, residual=True).residual_layers() == [0, 1, 2]
    assert LSTM(3, 4, 3, residual=True).residual_layers() == [1, 2]
    assert LSTM(8, 4, 2, bidirectional=True, residual=True).residual_layers() == [0, 1]
    assert LSTM(2, 4, 2, proj_size=2, residual=True).residual_layers() == [0, 1]
    assert GRU(4, 4, 2).residual_layers() == []
