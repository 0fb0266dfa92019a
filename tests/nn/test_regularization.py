"""The regularisers of our LSTM / GRU against a naive reference given the same masks, and their contract."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from rnn_stability.nn import GRU, LSTM, GRUCell, LSTMCell, convert_rnn, regularization
from rnn_stability.nn.native import LSTMLayerNormLayerNative
from rnn_stability.nn.native_gru import GRULayerNormLayerNative
from rnn_stability.nn.regularization import draw_masks, dropout_mask, keep_mask, quantized_probability
from tests.helpers import native_kernel_or_skip
from tests.nn.regularization_reference import regularized_reference

ALL = {
    "weight_dropout": 0.3,
    "recurrent_dropout": 0.4,
    "input_dropout": 0.25,
    "zoneout": 0.3,
    "batch_norm": True,
}
ONE_BY_ONE = [{k: v} for k, v in ALL.items()]


def build(lstm: bool, layer_norm: bool | str, bidirectional: bool, proj: bool, **options) -> nn.RNNBase:
    cls = LSTM if lstm else GRU
    extra = {"proj_size": 2} if lstm and proj else {}
    if not lstm:
        options = {k: (v[0] if k == "zoneout" and isinstance(v, tuple) else v) for k, v in options.items()}
    module = cls(
        3,
        4,
        num_layers=2,
        bidirectional=bidirectional,
        layer_norm=layer_norm,
        dtype=torch.float64,
        **extra,
        **options,
    )
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.7, 0.7)
    return module


def _run(module: nn.RNNBase, packed: bool, seed: int = 0, with_h0: bool = True):
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 5, 4] if packed else [5, 5, 5]
    seqs = [torch.randn(n, 3, generator=gen, dtype=torch.float64).requires_grad_() for n in lengths]
    dirs = 2 if module.bidirectional else 1
    sizes = [module.proj_size or module.hidden_size] + (
        [module.hidden_size] if isinstance(module, nn.LSTM) else []
    )
    state = tuple(
        (0.5 * torch.randn(2 * dirs, 3, s, generator=gen, dtype=torch.float64)).requires_grad_()
        for s in sizes
    )
    hx = None if not with_h0 else (state if len(state) == 2 else state[0])
    if packed:
        inp = pack_sequence(seqs, enforce_sorted=False)
        positions = inp.unsorted_indices.tolist()
        step_sizes = inp.batch_sizes.tolist()
    else:
        inp, positions, step_sizes = torch.stack(seqs, 1), [0, 1, 2], [3] * 5
    module.mask_generator = torch.Generator().manual_seed(seed + 1)
    out, final = module(inp, hx)
    masks = draw_masks(module, step_sizes, seqs[0], torch.Generator().manual_seed(seed + 1))
    if packed:
        padded, _ = pad_packed_sequence(out)
        outs = [padded[:n, b] for b, n in enumerate(lengths)]
    else:
        outs = list(out.unbind(1))
    final = final if isinstance(final, tuple) else (final,)
    ref_outs, ref_final = regularized_reference(module, seqs, positions, masks, state if with_h0 else None)
    leaves = seqs + (list(state) if with_h0 else []) + list(module.parameters())
    return (outs, final), (ref_outs, ref_final), leaves


def _loss(outs: list[Tensor], final: tuple[Tensor, ...]) -> Tensor:
    total = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    return total + sum((0.3 * s).sum() for s in final)


def _check_parity(module: nn.RNNBase, packed: bool, with_h0: bool = True) -> None:
    (outs, final), (ref_outs, ref_final), leaves = _run(module, packed, with_h0=with_h0)
    for o, r in zip(outs, ref_outs, strict=True):
        torch.testing.assert_close(o, r, atol=1e-10, rtol=1e-8)
    for s, r in zip(final, ref_final, strict=True):
        torch.testing.assert_close(s, r, atol=1e-10, rtol=1e-8)
    got = torch.autograd.grad(_loss(outs, final), leaves, allow_unused=True)
    want = torch.autograd.grad(_loss(ref_outs, ref_final), leaves, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("lstm", [True, False], ids=["lstm", "gru"])
@pytest.mark.parametrize("layer_norm", [False, "recurrent", "joint"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("options", [ALL, *ONE_BY_ONE], ids=["all", *ALL])
def test_matches_reference_with_the_same_masks(lstm: bool, layer_norm, packed: bool, options: dict) -> None:
    module = build(lstm, layer_norm, bidirectional=True, proj=False, **options)
    _check_parity(module.train(), packed)


@pytest.mark.parametrize("lstm", [True, False], ids=["lstm", "gru"])
@pytest.mark.parametrize("native", [True, False], ids=["cpp", "pytorch"])
def test_padded_parity_runs_the_cpp_loop(lstm: bool, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recurrent dropout and zoneout of equal-length sequences run the C++ loop (every layer norm and none),
    and the PyTorch loops with `RNN_STABILITY_NATIVE=0`; both match the reference."""
    native_kernel_or_skip()
    monkeypatch.setenv("RNN_STABILITY_NATIVE", "1" if native else "0")
    function = LSTMLayerNormLayerNative if lstm else GRULayerNormLayerNative
    calls = []
    monkeypatch.setattr(function, "apply", lambda *args, f=function.apply: calls.append(1) or f(*args))
    for layer_norm in (False, "recurrent", "joint"):
        options = {"recurrent_dropout": 0.4, "zoneout": (0.3, 0.2)}
        module = build(lstm, layer_norm, bidirectional=True, proj=lstm, **options)
        _check_parity(module.train(), packed=False)
        _check_parity(module.eval(), packed=False)
    assert len(calls) == (24 if native else 0)


@pytest.mark.parametrize("layer_norm", [False, "joint"])
def test_lstm_projection_and_cell_zoneout(layer_norm) -> None:
    module = build(True, layer_norm, bidirectional=False, proj=True, **{**ALL, "zoneout": (0.2, 0.5)})
    _check_parity(module.train(), packed=True, with_h0=False)
    _check_parity(module.eval(), packed=False)


@pytest.mark.parametrize("lstm", [True, False], ids=["lstm", "gru"])
def test_eval_matches_reference(lstm: bool) -> None:
    """In eval: no dropout, zoneout's expectation, batch norm's running statistics."""
    module = build(lstm, False, bidirectional=True, proj=False, **ALL)
    for name, buf in module.named_buffers():
        if "running" in name:
            buf.uniform_(0.5, 1.5)
    _check_parity(module.eval(), packed=True)


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("layer_norm", [False, "recurrent"])
def test_dropouts_are_no_ops_in_eval(cls: type[nn.RNNBase], layer_norm) -> None:
    torch.manual_seed(0)
    plain = cls(5, 8, num_layers=2, layer_norm=layer_norm, bidirectional=True).eval()
    dropped = cls(
        5, 8, num_layers=2, layer_norm=layer_norm, bidirectional=True,
        weight_dropout=0.5, recurrent_dropout=0.5, input_dropout=0.5,
    ).eval()  # fmt: skip
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(7, 3, 5)
    state = torch.random.get_rng_state()
    assert torch.equal(plain(x)[0], dropped(x)[0])
    assert torch.equal(state, torch.random.get_rng_state()), "eval drew random numbers"


def test_gradcheck() -> None:
    for cls, layer_norm in ((LSTM, False), (GRU, "recurrent"), (LSTM, "joint")):
        module = cls(2, 3, layer_norm=layer_norm, dtype=torch.float64, **ALL).train()
        x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

        def f(x: Tensor, module: nn.Module = module) -> Tensor:
            module.mask_generator = torch.Generator().manual_seed(3)
            return module(x)[0]

        assert torch.autograd.gradcheck(f, (x,))


@pytest.fixture(params=["native", "torch"])
def mask_source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Masks from the C++ SplitMix64 stream (when the kernel builds) or from torch's generator itself."""
    if request.param == "native":
        native_kernel_or_skip()
    else:
        monkeypatch.setattr(regularization, "_mask_ops", lambda like, dtype: None)
    return request.param


def test_mask_statistics(mask_source: str) -> None:
    like = torch.empty(0)
    gen = torch.Generator().manual_seed(0)
    for p in (0.1, 0.5, 0.8):
        m = dropout_mask((1000, 1000), p, like, gen)
        assert abs(float((m == 0).float().mean()) - p) < 3e-3
        assert abs(float(m.mean()) - 1.0) < 1e-2
        assert torch.equal(m.unique(), torch.tensor([0.0, 1.0 / (1.0 - quantized_probability(p))]))
        k = keep_mask((1000, 1000), p, like, gen)
        assert abs(float(k.mean()) - p) < 3e-3


def test_masks_apply_p_in_steps_of_2_to_the_minus_16(mask_source: str) -> None:
    """Exact multiples of 2**-8 (8 random bits a value) and of 2**-16 (16 bits), odd sizes, the extremes."""
    like = torch.empty(0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    assert quantized_probability(0.1) == 6554 / 2**16 and quantized_probability(0.25) == 0.25
    for p in (0.25, 0.5, 0.1, 0.3):
        k = keep_mask((999, 1001), p, like, gen)
        assert k.dtype == torch.float64 and k.shape == (999, 1001) and set(k.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(k.mean()) - p) < 2e-3
        m = dropout_mask((999, 1001), p, like, gen)
        assert abs(float(m.mean()) - 1.0) < 5e-3
    assert keep_mask((3, 5), 1e-6, like).eq(0).all() and keep_mask((3, 5), 1 - 1e-6, like).eq(1).all()
    assert dropout_mask((3, 5), 1e-6, like).eq(1).all() and dropout_mask((3, 5), 1 - 1e-6, like).eq(0).all()
    assert keep_mask((0, 4), 0.1, like).shape == (0, 4) and keep_mask((7,), 0.1, like).shape == (7,)
    first = keep_mask((8, 3), 0.1, like, torch.Generator().manual_seed(5))
    assert torch.equal(first, keep_mask((8, 3), 0.1, like, torch.Generator().manual_seed(5)))
    assert keep_mask((8, 3), 0.1, like, dtype=torch.bool).dtype == torch.bool


def _splitmix64_lanes(seed: int, n: int) -> list[int]:
    """The first `n` 16-bit lanes of the SplitMix64 stream started at `seed` (csrc/masks.cpp), in Python."""
    lanes, mask64 = [], 2**64 - 1
    for i in range((n + 3) // 4):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        z ^= z >> 31
        lanes += [(z >> (16 * k)) & 0xFFFF for k in range(4)]
    return lanes[:n]


def test_native_masks_are_the_documented_splitmix64_lanes() -> None:
    """On CPU with the kernel: value j compares lane j % 4 of word j // 4 of SplitMix64 seeded by one int64
    draw of the generator, for every dtype; the same with any thread count (counter-based, parallel blocks)."""
    native_kernel_or_skip()
    seed = int(
        torch.empty((), dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(7))
    )
    lanes = _splitmix64_lanes(seed % 2**64, 4099)
    q = round(0.3 * 2**16)
    expected = torch.tensor([lane < q for lane in lanes])
    keep = keep_mask((4099,), 0.3, torch.empty(0), torch.Generator().manual_seed(7), torch.bool)
    assert torch.equal(keep, expected)
    drop = dropout_mask((4099,), 0.7, torch.empty(0, dtype=torch.float64), torch.Generator().manual_seed(7))
    assert torch.equal(drop, expected.double() / (1 - quantized_probability(0.7)))
    threads = torch.get_num_threads()
    try:
        big = [keep_mask((300, 1000), 0.1, torch.empty(0), torch.Generator().manual_seed(2))]
        torch.set_num_threads(2)
        big.append(keep_mask((300, 1000), 0.1, torch.empty(0), torch.Generator().manual_seed(2)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(big[0], big[1])


def test_masks_drawn_in_chunks_are_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the kernel, on CPU the random words come in chunks through a scratch buffer: the same bits as
    one draw (what `torch.compile` runs), in inference mode too."""
    monkeypatch.setattr(regularization, "_mask_ops", lambda like, dtype: None)
    words = torch.empty(1000, dtype=torch.int64).random_(
        -(2**63), None, generator=torch.Generator().manual_seed(3)
    )
    monkeypatch.setattr(regularization, "_SCRATCH_WORDS", 64)
    monkeypatch.setattr(regularization._scratch, "words", None, raising=False)
    with torch.inference_mode():
        keep = keep_mask((3999,), 0.1, torch.empty(0), torch.Generator().manual_seed(3))
    assert torch.equal(keep, words.view(torch.int16)[:3999].lt(6554 - 2**15).float())
    drop = dropout_mask((7, 1000), 0.5, torch.empty(0), torch.Generator().manual_seed(3))
    assert torch.equal(drop.flatten(), words.view(torch.uint8)[:7000].lt(128).float() * 2)


def test_masks_shapes_and_sharing_over_time() -> None:
    module = LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=5, **{**ALL, "zoneout": (0.1, 0.2)})
    masks = draw_masks(module, [4, 4, 3], torch.empty(0))
    assert len(masks) == 4
    assert masks[0].weight_hh.shape == module.weight_hh_l0.shape
    assert masks[0].input.shape == (4, 3) and masks[2].input.shape == (4, 10)
    assert masks[1].input is None and masks[3].input is None
    assert masks[1].recurrent.shape == (4, 5)
    assert masks[1].zone_h.shape == (11, 5) and masks[1].zone_c.shape == (11, 8)
    assert all(m == (None,) * 5 for m in draw_masks(module.eval(), [4], torch.empty(0)))


def test_input_dropout_is_locked_over_time() -> None:
    """A unit of the input dropped at one step is dropped at every step: the output is blind to it."""
    torch.manual_seed(0)
    module = GRU(50, 4, input_dropout=0.5)
    x = torch.randn(6, 2, 50, requires_grad=True)
    module(x)[0].sum().backward()
    dead = (x.grad.abs() == 0).all(0)  # (batch, features): dropped for the whole sequence
    assert 0.3 < float(dead.float().mean()) < 0.7
    assert ((x.grad.abs() == 0) == dead.unsqueeze(0)).all()


def test_seeded_runs_reproduce() -> None:
    module = LSTM(3, 6, **ALL)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(7)
    a = module(x)[0]
    torch.manual_seed(7)
    assert torch.equal(a, module(x)[0])


def test_weight_dropout_contract() -> None:
    torch.manual_seed(0)
    module = LSTM(3, 6, num_layers=2, weight_dropout=0.5)
    reference = LSTM(3, 6, num_layers=2)
    assert module.state_dict().keys() == reference.state_dict().keys()
    module.flatten_parameters()
    x = torch.randn(5, 2, 3)
    module(x)[0].sum().backward()
    grad = module.weight_hh_l0.grad
    assert grad is not None and 0.3 < float((grad == 0).float().mean()) < 0.7  # dropped weights get none
    assert module.weight_hh_l0 is module._flat_weights[1]
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert clone.weight_dropout == 0.5 and "weight_dropout=0.5" in repr(clone)
        torch.manual_seed(1)
        a = clone(x)[0]
        torch.manual_seed(1)
        torch.testing.assert_close(a, module(x)[0])
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    reference.load_state_dict(torch.load(buffer))
    assert torch.equal(reference.eval()(x)[0], module.eval()(x)[0])


def test_weight_dropout_under_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled, masks come from torch's generator (the C++ stream is eager-only): so does the eager run here."""
    monkeypatch.setattr(regularization, "_mask_ops", lambda like, dtype: None)
    torch.manual_seed(0)
    module = LSTM(3, 6, num_layers=2, weight_dropout=0.5, input_dropout=0.2)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=False)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(3)
    out = compiled(x)[0]
    out.sum().backward()
    torch.manual_seed(3)
    torch.testing.assert_close(out, module(x)[0])
    assert module.weight_hh_l0.grad is not None


def test_options_validated_and_shown() -> None:
    for name in ("weight_dropout", "recurrent_dropout", "input_dropout", "zoneout"):
        with pytest.raises(ValueError, match=f"`{name}` must be a float in \\[0, 1\\)"):
            LSTM(2, 3, **{name: 1.0})
        with pytest.raises(TypeError, match=f"`{name}`"):
            GRU(2, 3, **{name: "0.1"})
    with pytest.raises(TypeError, match="`batch_norm`"):
        LSTM(2, 3, batch_norm=1)
    with pytest.raises(ValueError, match="`batch_norm`"):
        LSTM(2, 3, batch_norm=True, layer_norm=True)
    with pytest.raises(TypeError, match="`zoneout`"):
        GRU(2, 3, zoneout=(0.1, 0.2))
    text = repr(LSTM(2, 3, weight_dropout=0.1, zoneout=(0.1, 0.2), batch_norm=True))
    assert "weight_dropout=0.1" in text and "zoneout=(0.1, 0.2)" in text and "batch_norm=True" in text
    assert "zoneout=0.1" in repr(GRUCell(2, 3, zoneout=0.1))


def test_old_pickles_get_defaults() -> None:
    module = LSTM(2, 3)
    x = torch.randn(4, 1, 2)
    expected = module(x)[0]
    for name in ("weight_dropout", "zoneout", "batch_norm"):
        del module.__dict__[name]
    clone = pickle.loads(pickle.dumps(module))
    assert clone.zoneout == (0.0, 0.0) and clone.weight_dropout == 0.0 and clone.batch_norm is False
    assert torch.equal(clone(x)[0], expected)


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_cells_zoneout(cls: type[nn.RNNCellBase], layer_norm: bool) -> None:
    torch.manual_seed(0)
    cell = cls(3, 5, layer_norm=layer_norm, zoneout=0.4)
    plain = cls(3, 5, layer_norm=layer_norm)
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(2, 3)
    hx = (torch.randn(2, 5), torch.randn(2, 5)) if cls is LSTMCell else torch.randn(2, 5)
    new, old = plain(x, hx), hx
    if cls is GRUCell:
        new, old = (new,), (old,)
    cell.mask_generator = torch.Generator().manual_seed(5)
    got = cell(x, hx)
    got = got if isinstance(got, tuple) else (got,)
    gen = torch.Generator().manual_seed(5)
    for g, n, o in zip(got, new, old, strict=True):
        keep = keep_mask(n.shape, 0.4, n, gen)
        torch.testing.assert_close(g, keep * o + (1 - keep) * n)
    cell.eval()
    got = cell(x, hx)
    got = got if isinstance(got, tuple) else (got,)
    for g, n, o in zip(got, new, old, strict=True):
        torch.testing.assert_close(g, 0.4 * o + 0.6 * n)


def test_convert_rnn_accepts_the_options() -> None:
    model = nn.Sequential(nn.LSTM(3, 4), nn.GRUCell(4, 4))
    convert_rnn(
        model, weight_dropout=0.2, recurrent_dropout=0.1, input_dropout=0.1, zoneout=0.1, batch_norm=True
    )
    assert model[0].weight_dropout == 0.2 and model[0].batch_norm and hasattr(model[0], "batch_norm_ih_l0")
    assert model[1].zoneout == (0.1, 0.1)
    model[0](torch.randn(5, 2, 3))[0].sum().backward()
    convert_rnn(model, batch_norm=False)
    assert not hasattr(model[0], "batch_norm_ih_l0") and model[0].weight_dropout == 0.0
    with pytest.raises(ValueError, match="`weight_dropout`"):
        convert_rnn(model, weight_dropout=1.5)
