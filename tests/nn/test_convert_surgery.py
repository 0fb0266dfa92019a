"""`convert_rnn` keeps the model the same model: sharing, flags, hooks, parametrizations, RNG, subclasses."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnn_stability.nn import GRU, LSTM, GRUCell, convert_rnn
from rnn_stability.nn.convert import convert_rnn_modules


class PackingLSTM(nn.LSTM):
    """Like pytorch-forecasting's `LSTM`: extra methods and attributes, a forward that calls super()."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tag = "mine"

    def init_hidden_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(self.num_layers, x.size(0), self.hidden_size, dtype=x.dtype)
        return h, h.clone()

    def forward(self, x: torch.Tensor, hx: object = None, lengths: torch.Tensor | None = None) -> object:  # type: ignore[override]
        if lengths is None:
            return super().forward(x, hx)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = super().forward(packed, hx)
        return pad_packed_sequence(out, batch_first=True)[0], state


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.GRU(3, 3, batch_first=True)
        self.decoder = self.encoder  # the same module under two names
        self.cell = nn.GRUCell(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, h = self.encoder(x)
        b, _ = self.decoder(a, h)
        return b.sum() + self.cell(x[:, 0]).sum()


def test_shared_module_stays_shared_and_is_listed_once() -> None:
    model = Shared()
    assert convert_rnn_modules(model, layer_norm=True) == ["encoder", "cell"]
    assert model.decoder is model.encoder and isinstance(model.encoder, GRU) and model.encoder.layer_norm
    assert isinstance(model.cell, GRUCell)
    names = [n for n, _ in model.named_parameters()]
    assert "encoder.layer_norm_hh_l0.weight" in names and not any(n.startswith("decoder") for n in names)


def test_requires_grad_mode_and_frozen_modules() -> None:
    model = nn.ModuleDict({"frozen": nn.LSTM(3, 4), "partial": nn.LSTM(3, 4)}).eval()
    model["frozen"].requires_grad_(False)
    model["partial"].weight_hh_l0.requires_grad_(False)
    convert_rnn(model, layer_norm=True)
    assert not any(p.requires_grad for p in model["frozen"].parameters())
    flags = {n: p.requires_grad for n, p in model["partial"].named_parameters()}
    assert not flags.pop("weight_hh_l0") and all(flags.values())
    assert not any(m.training for m in model.modules())


def test_hooks_survive() -> None:
    lstm = nn.LSTM(3, 4)
    calls: list[str] = []
    lstm.register_forward_pre_hook(lambda m, a: calls.append("pre"))
    lstm.register_forward_hook(lambda m, a, o: calls.append("post"))
    lstm.register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    lstm.weight_ih_l0.register_hook(lambda g: calls.append("grad") or g)
    convert_rnn(lstm, layer_norm=True)
    out, _ = lstm(torch.randn(5, 2, 3, requires_grad=True))
    out.sum().backward()
    assert sorted(calls) == ["backward", "grad", "post", "pre"]


def test_parametrizations_survive() -> None:
    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    parametrize.register_parametrization(lstm, "weight_hh_l0", Double())
    x = torch.randn(5, 2, 3)
    expected = lstm(x)[0]
    convert_rnn(lstm)
    assert isinstance(lstm, LSTM) and parametrize.is_parametrized(lstm, "weight_hh_l0")
    assert torch.equal(lstm(x)[0], expected)
    convert_rnn(lstm, layer_norm=True)
    lstm(x)[0].sum().backward()
    assert lstm.parametrizations.weight_hh_l0.original.grad is not None


def test_random_generator_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4, num_layers=2, dropout=0.5), nn.GRUCell(3, 4))
    state = torch.get_rng_state()
    convert_rnn(model, layer_norm=True, residual=True)
    assert torch.equal(torch.get_rng_state(), state)


def _trajectory(convert: bool) -> list[float]:
    torch.manual_seed(0)
    model = nn.LSTM(3, 4, num_layers=2, dropout=0.3, batch_first=True)
    if convert:
        convert_rnn(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(4):
        x = torch.randn(6, 5, 3)[torch.randperm(6)]  # shuffling and dropout both draw from the generator
        loss = model(x)[0].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_options_off_training_trajectory_is_bit_identical() -> None:
    assert _trajectory(convert=True) == _trajectory(convert=False)


def test_subclass_keeps_its_methods_and_runs_our_machinery() -> None:
    torch.manual_seed(0)
    lstm = PackingLSTM(3, 4, batch_first=True)
    x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 3])
    expected = lstm(x, lengths=lengths)[0]
    convert_rnn(lstm)
    assert isinstance(lstm, PackingLSTM) and isinstance(lstm, LSTM) and type(lstm).__name__ == "PackingLSTM"
    assert lstm.tag == "mine" and lstm.init_hidden_state(x)[0].shape == (1, 2, 4)
    assert torch.equal(lstm(x, lengths=lengths)[0], expected)
    convert_rnn(lstm, layer_norm=True)
    with torch.no_grad():
        lstm.layer_norm_hh_l0.weight.mul_(0.5)
    out = lstm(x, lengths=lengths)[0]
    assert not torch.allclose(out, expected)
    out.sum().backward()
    assert lstm.layer_norm_hh_l0.weight.grad is not None
    # Built at run time, the combined class still pickles and deep-copies (DDP spawn, neuralforecast).
    for twin in (copy.deepcopy(lstm), pickle.loads(pickle.dumps(lstm))):
        assert type(twin) is type(lstm) and torch.equal(twin(x, lengths=lengths)[0], out)
    buffer = io.BytesIO()
    torch.save(lstm, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x, lengths=lengths)[0], out)


def test_include_and_exclude_patterns() -> None:
    def model() -> nn.Module:
        return nn.ModuleDict(
            {"enc_a": nn.LSTM(2, 2), "enc_b": nn.GRU(2, 2), "dec": nn.LSTM(2, 2), "head": nn.Linear(2, 2)}
        )

    assert convert_rnn_modules(model(), include="enc_*") == ["enc_a", "enc_b"]
    assert convert_rnn_modules(model(), include=["enc_*", "dec"], exclude="enc_b") == ["enc_a", "dec"]
    m = model()
    convert_rnn(m, exclude=("dec",), layer_norm=True)
    assert type(m["dec"]) is nn.LSTM and m["enc_a"].layer_norm
    with pytest.warns(UserWarning, match="'nope' matches no recurrent module"):
        convert_rnn(model(), include=["enc_a", "nope"])
    with pytest.warns(UserWarning, match="left no recurrent module"):
        convert_rnn(model(), exclude="*")


def test_warns_when_the_model_holds_no_rnn() -> None:
    with pytest.warns(UserWarning, match="holds no torch.nn.LSTM"):
        convert_rnn(nn.Linear(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_rnn(nn.LSTM(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"include": 3}, TypeError, "`include` must be"),
        ({"exclude": ["a", 1]}, TypeError, "`exclude` must be"),
        ({"layer_norm": 1}, TypeError, "layer_norm"),
        ({"layer_norm": "yes"}, ValueError, "'recurrent', 'joint', 'separate'"),
        ({"num_layers": 2}, TypeError, "num_layers"),
        ({"layer_nrom": True}, TypeError, "layer_nrom"),
    ],
)
def test_bad_arguments_are_rejected_before_any_change(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    model = nn.Sequential(nn.LSTM(2, 2))
    with pytest.raises(error, match=match):
        convert_rnn(model, **kwargs)  # type: ignore[arg-type]
    assert type(model[0]) is nn.LSTM
