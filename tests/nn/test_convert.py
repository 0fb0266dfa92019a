"""``convert_rnn`` swaps torch's recurrent modules anywhere in a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM, GRUCell, LSTMCell, convert_rnn


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.rnns = nn.ModuleList(
            [nn.LSTM(4, 4, 2, proj_size=2, bidirectional=True), nn.GRU(4, 4, batch_first=True)]
        )
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(4, 5), "gru": nn.GRUCell(4, 5, bias=False)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder(x)
        a, _ = self.rnns[0](e)
        b, _ = self.rnns[1](e.transpose(0, 1))
        h, c = self.cells["lstm"](e[0])
        g = self.cells["gru"](e[0])
        return torch.cat([a.flatten(), b.flatten(), h.flatten(), c.flatten(), g.flatten()])


def test_options_off_outputs_equal_exactly() -> None:
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(5, 2, 3)
    expected = model(x)
    converted = convert_rnn(model)
    assert converted is model
    assert [type(m) for m in model.rnns] == [LSTM, GRU]
    assert type(model.cells["lstm"]) is LSTMCell and type(model.cells["gru"]) is GRUCell
    assert model.rnns[0].proj_size == 2 and model.rnns[1].batch_first and not model.training
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_layer_norm_conversion_keeps_weights_dtype_and_mode(dtype: torch.dtype) -> None:
    model = Model().to(dtype).train()
    weight = model.rnns[0].weight_hh_l1_reverse.detach().clone()
    convert_rnn(model, layer_norm=True, residual=True)
    lstm = model.rnns[0]
    assert lstm.layer_norm and lstm.residual and lstm.training
    assert torch.equal(lstm.weight_hh_l1_reverse, weight)
    assert all(p.dtype == dtype for p in model.parameters())
    assert model.cells["lstm"].layer_norm and not hasattr(model.cells["lstm"], "residual")
    assert model(torch.randn(5, 2, 3, dtype=dtype)).isfinite().all()


def test_root_module_is_converted_and_reconverted() -> None:
    torch.manual_seed(0)
    root = nn.GRU(3, 3)
    ours = convert_rnn(root, layer_norm="joint")
    assert type(ours) is GRU and ours.layer_norm
    with torch.no_grad():
        ours.layer_norm_gates_l0.weight.fill_(2.0)
    again = convert_rnn(ours, layer_norm="joint", residual=True)
    assert again.residual and torch.equal(again.layer_norm_gates_l0.weight, ours.layer_norm_gates_l0.weight)
    back = convert_rnn(ours)
    assert not back.layer_norm and not hasattr(back, "layer_norm_gates_l0")


def test_conversion_is_in_place_and_keeps_parameter_identity() -> None:
    model = Model()
    before = list(model.parameters())
    lstm = model.rnns[0]
    assert convert_rnn(model, layer_norm=True) is model
    assert model.rnns[0] is lstm and isinstance(lstm, LSTM)
    # The recurrent weights are the same tensors, in the same order (an optimizer built before still
    # updates them); each module's layer-norm parameters come after its own, as when built with ours.
    ids = {id(p) for p in before}
    assert [p for p in model.parameters() if id(p) in ids] == before
    assert len(list(model.parameters())) > len(before)


def test_reconverting_between_layer_norm_variants_keeps_the_gains_they_share() -> None:
    lstm = convert_rnn(nn.LSTM(3, 4), layer_norm="separate")
    assert isinstance(lstm, LSTM) and lstm.layer_norm_variant == "separate"
    with torch.no_grad():
        lstm.layer_norm_hh_l0.weight.fill_(2.0)
    convert_rnn(lstm, layer_norm="recurrent")
    assert lstm.layer_norm_variant == "recurrent" and not hasattr(lstm, "layer_norm_ih_l0")
    assert torch.equal(lstm.layer_norm_hh_l0.weight, torch.full((4, 4), 2.0))
    convert_rnn(lstm, layer_norm="joint")
    names = {name for name, _ in lstm.named_parameters() if name.startswith("layer_norm")}
    assert names == {"layer_norm_gates_l0.weight", "layer_norm_cell_l0.weight", "layer_norm_cell_l0.bias"}
    fresh = LSTM(3, 4, layer_norm="joint")
    fresh.load_state_dict(lstm.state_dict())
    x = torch.randn(5, 2, 3)
    assert torch.equal(lstm(x)[0], fresh(x)[0])
