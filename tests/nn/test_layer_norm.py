"""Layer-norm and residual paths: parameters, initialisation, gradcheck, cells, dtypes, dropout, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_sequence

from rnn_stability.nn import GRU, LSTM, GateLayerNorm, GRUCell, LSTMCell, gate_layer_norm
from rnn_stability.nn.layer_norm import DEFAULT_LAYER_NORM, GATE_NORMS, LAYER_NORM_VARIANTS
from tests.nn.naive_reference import reference_cell_step

variants = pytest.mark.parametrize("variant", LAYER_NORM_VARIANTS)
# The gate normalisations of each variant, as parameter-name stems (`layer_norm_<kind>_l0.weight`).
GATE_KINDS = {"recurrent": ["hh"], "joint": ["gates"], "separate": ["ih", "hh"], "scaled": ["input", "hh"]}


@variants
def test_layer_norm_parameter_names_and_identity_init(variant: str) -> None:
    lstm = LSTM(3, 4, 2, bidirectional=True, layer_norm=variant)  # type: ignore[arg-type]
    extra = {k: v for k, v in lstm.state_dict().items() if k.startswith("layer_norm")}
    params = [(kind, "weight") for kind in GATE_KINDS[variant]] + [("cell", "weight"), ("cell", "bias")]
    assert set(extra) == {
        f"layer_norm_{kind}_l{k}{s}.{p}" for k in (0, 1) for s in ("", "_reverse") for kind, p in params
    }
    assert extra[f"layer_norm_{GATE_KINDS[variant][0]}_l0.weight"].shape == (4, 4)
    for name, value in extra.items():
        assert torch.equal(
            value, torch.zeros_like(value) if name.endswith("bias") else torch.ones_like(value)
        )
    gru = GRU(3, 4, layer_norm=variant, bias=False)  # type: ignore[arg-type]
    assert sorted(k for k in gru.state_dict() if k.startswith("layer_norm")) == sorted(
        f"layer_norm_{kind}_l0.weight" for kind in GATE_KINDS[variant]
    )
    cell = LSTMCell(3, 4, layer_norm=variant)  # type: ignore[arg-type]
    assert sorted(k for k in cell.state_dict() if k.startswith("layer_norm")) == sorted(
        [f"layer_norm_{kind}.weight" for kind in GATE_KINDS[variant]]
        + ["layer_norm_cell.bias", "layer_norm_cell.weight"]
    )
    assert [f"layer_norm_{kind}" for kind in GATE_KINDS[variant]] == list(GATE_NORMS[variant])  # type: ignore[index]


def test_true_means_the_default_variant_and_false_means_off() -> None:
    for cls in (LSTM, GRU, LSTMCell, GRUCell):
        module = cls(3, 4, layer_norm=True)
        assert module.layer_norm is True and module.layer_norm_variant == DEFAULT_LAYER_NORM
        default = cls(3, 4, layer_norm=DEFAULT_LAYER_NORM)
        assert set(module.state_dict()) == set(default.state_dict())
        assert cls(3, 4).layer_norm_variant is None and "layer_norm" not in repr(cls(3, 4))
    assert "layer_norm=True" in repr(LSTM(3, 4, layer_norm=True))
    assert "layer_norm='separate'" in repr(GRUCell(3, 4, layer_norm="separate"))


@pytest.mark.parametrize("cls", [LSTM, GRU, LSTMCell, GRUCell])
def test_checkpoint_of_the_separate_variant_loads_into_separate(cls: type) -> None:
    """Checkpoints saved when `layer_norm=True` meant `"separate"` load with `layer_norm="separate"`; loading
    them into another variant fails, saying which one to pick."""
    torch.manual_seed(0)
    saved = cls(3, 4, layer_norm="separate")
    state = saved.state_dict()
    assert any(k.startswith("layer_norm_ih") for k in state)
    restored = cls(3, 4, layer_norm="separate")
    restored.load_state_dict(state)
    x = torch.randn(2, 3) if issubclass(cls, nn.RNNCellBase) else torch.randn(5, 2, 3)
    for a, b in zip(_flat(saved(x)), _flat(restored(x)), strict=True):
        assert torch.equal(a, b)
    hint = "build the module with layer_norm='separate' to load them"
    for other in ("joint", "recurrent", False):
        with pytest.warns(UserWarning, match=hint), pytest.raises(RuntimeError, match="layer_norm_ih"):
            cls(3, 4, layer_norm=other).load_state_dict(state)
    # strict=False: the mismatches are reported as torch reports them, and the warning says what to do.
    with pytest.warns(UserWarning, match=f"loading {cls.__name__}: the checkpoint's .* {hint}"):
        result = cls(3, 4, layer_norm="joint").load_state_dict(state, strict=False)
    assert any("layer_norm_ih" in k for k in result.unexpected_keys)
    wrapped = nn.Sequential(cls(3, 4, layer_norm="joint"))
    recurrent = {f"0.{k}": v for k, v in cls(3, 4, layer_norm="recurrent").state_dict().items()}
    with pytest.warns(UserWarning, match=f"loading {cls.__name__} '0': .*saved with layer_norm='recurrent'"):
        wrapped.load_state_dict(recurrent, strict=False)


def _weight(module: nn.Module, child: str) -> Tensor | None:
    norm = getattr(module, child, None)
    return None if norm is None else norm.weight


def _flat(result: object) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    assert isinstance(result, tuple)
    return [t for item in result for t in _flat(item)]


@variants
@pytest.mark.parametrize(("ours", "theirs"), [(LSTM, nn.LSTM), (GRU, nn.GRU)])
def test_torch_state_dict_loads_with_only_layer_norm_missing(ours: type, theirs: type, variant: str) -> None:
    source = theirs(3, 4, 2, bidirectional=True)
    module = ours(3, 4, 2, bidirectional=True, layer_norm=variant)
    result = module.load_state_dict(source.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("layer_norm_") for k in result.missing_keys)
    assert torch.equal(module.weight_hh_l1_reverse, source.weight_hh_l1_reverse)


def test_reset_parameters_restores_identity_layer_norm() -> None:
    lstm = LSTM(3, 4, layer_norm=True)
    with torch.no_grad():
        lstm.layer_norm_hh_l0.weight.fill_(3.0)
    lstm.reset_parameters()
    assert torch.equal(lstm.layer_norm_hh_l0.weight, torch.ones(4, 4))
    cell = LSTMCell(3, 4, layer_norm=True)
    cell.reset_parameters()
    assert torch.equal(cell.layer_norm_cell.bias, torch.zeros(4))


def test_gate_layer_norm_normalises_each_block() -> None:
    x = torch.randn(5, 12) * 10 + 3
    y = gate_layer_norm(x, torch.ones(3, 4))
    torch.testing.assert_close(y.mean(-1), torch.zeros(5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(5, 3), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="num_gates"):
        GateLayerNorm(0, 4)


def _gradcheck_module(module: nn.Module, inputs: tuple, packed_lengths: list[int] | None = None) -> None:
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in module.parameters())

    def fn(x: Tensor, *flat: Tensor) -> Tensor:
        inp = pack_sequence([x[:n, b] for b, n in enumerate(packed_lengths)]) if packed_lengths else x
        out, state = functional_call(module, dict(zip(names, flat, strict=True)), (inp,))
        out = out.data if packed_lengths else out
        state = state if isinstance(state, tuple) else (state,)
        return torch.cat([out.reshape(-1)] + [s.reshape(-1) for s in state])

    assert torch.autograd.gradcheck(fn, inputs + params, fast_mode=True)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize(
    "module",
    [
        LSTM(3, 3, 2, bidirectional=True, proj_size=2, layer_norm=True, residual=True, dtype=torch.float64),
        LSTM(3, 3, 2, bias=False, layer_norm=True, residual=True, dtype=torch.float64),
        GRU(3, 3, 2, bidirectional=True, layer_norm=True, residual=True, dtype=torch.float64),
        GRU(3, 3, 2, bias=False, layer_norm=True, dtype=torch.float64),
        LSTM(3, 3, 2, bidirectional=True, proj_size=2, layer_norm="recurrent", dtype=torch.float64),
        GRU(3, 3, 2, bidirectional=True, layer_norm="recurrent", residual=True, dtype=torch.float64),
        LSTM(3, 3, 2, bidirectional=True, layer_norm="separate", residual=True, dtype=torch.float64),
        GRU(3, 3, 2, bidirectional=True, layer_norm="separate", dtype=torch.float64),
        LSTM(3, 3, 2, residual=True, dtype=torch.float64),
        GRU(3, 3, 2, bidirectional=True, residual=True, dtype=torch.float64),
    ],
    ids=[
        "lstm-ln-res-bi-proj",
        "lstm-ln-res-nobias",
        "gru-ln-res-bi",
        "gru-ln-nobias",
        "lstm-recurrent-bi-proj",
        "gru-recurrent-res-bi",
        "lstm-separate-res-bi",
        "gru-separate-bi",
        "lstm-res",
        "gru-res-bi",
    ],
)
def test_gradcheck_layer_norm_and_residual(module: nn.Module, packed: bool) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    _gradcheck_module(module, (x,), [3, 2] if packed else None)


@variants
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", [LSTMCell, GRUCell])
def test_cells_layer_norm_match_reference_and_gradcheck(cls: type, bias: bool, variant: str) -> None:
    torch.manual_seed(0)
    cell = cls(3, 4, bias=bias, layer_norm=variant, dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)
    lstm = cls is LSTMCell
    x = torch.randn(2, 3, dtype=torch.float64)
    state = (torch.randn(2, 4, dtype=torch.float64),) + (
        (torch.randn(2, 4, dtype=torch.float64),) if lstm else ()
    )
    out = cell(x, state if lstm else state[0])
    out = out if isinstance(out, tuple) else (out,)
    params = {
        "w_ih": cell.weight_ih,
        "w_hh": cell.weight_hh,
        "b_ih": cell.bias_ih,
        "b_hh": cell.bias_hh,
        "w_hr": None,
        "g_ih": _weight(cell, "layer_norm_ih" if hasattr(cell, "layer_norm_ih") else "layer_norm_input"),
        "g_hh": _weight(cell, "layer_norm_hh"),
        "g_gates": _weight(cell, "layer_norm_gates"),
        "g_c": _weight(cell, "layer_norm_cell"),
        "b_c": cell.layer_norm_cell.bias if lstm else None,
    }
    mode = "LSTM" if lstm else "GRU"
    for b in range(2):
        expected = reference_cell_step(mode, x[b], tuple(s[b] for s in state), params, variant)
        for got, want in zip(out, expected, strict=True):
            torch.testing.assert_close(got[b], want, atol=1e-6, rtol=0)
    unbatched = cell(x[0], tuple(s[0] for s in state) if lstm else state[0][0])
    unbatched = unbatched if isinstance(unbatched, tuple) else (unbatched,)
    for got, want in zip(unbatched, out, strict=True):
        torch.testing.assert_close(got, want[0])
    inputs = (x.requires_grad_(),) + tuple(s.requires_grad_() for s in state)

    def fn(x: Tensor, *st: Tensor) -> Tensor:
        res = cell(x, st if lstm else st[0])
        return torch.cat([r.reshape(-1) for r in (res if isinstance(res, tuple) else (res,))])

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize(("ours", "theirs"), [(LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell)])
def test_cells_options_off_equal_torch(ours: type, theirs: type) -> None:
    cell = ours(3, 4)
    ref = theirs(3, 4)
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(5, 3)
    a, b = cell(x), ref(x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_low_precision_dtypes_close_to_float64(cls: type, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    module = cls(4, 8, 2, layer_norm=True, residual=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    expected, _ = module(x)
    low = module.to(dtype)
    out, state = low(x.to(dtype))
    assert out.dtype == dtype and (state[0] if isinstance(state, tuple) else state).dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=0)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in low.parameters())


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_dropout_between_layers_only_in_training(cls: type) -> None:
    torch.manual_seed(0)
    module = cls(4, 4, 2, dropout=1.0, layer_norm=True, residual=True)
    a, b = torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    # Everything layer 2 sees (input and residual) is dropped: the output no longer depends on the input.
    assert torch.equal(module(a)[0], module(b)[0])
    module.eval()
    assert not torch.equal(module(a)[0], module(b)[0])
    assert torch.equal(module(a)[0], module(a)[0])
