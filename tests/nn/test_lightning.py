"""A real ``Trainer.fit`` with each module, then a checkpoint round trip into a fresh model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM, GRUCell, LSTMCell
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class CellRNN(nn.Module):
    """Runs a cell over ``(B, T, F)`` input, returning ``(outputs, last_state)`` like an RNN module."""

    def __init__(self, cell: nn.RNNCellBase) -> None:
        super().__init__()
        self.cell = cell
        self.hidden_size = cell.hidden_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        state = None
        outs = []
        for x_t in x.unbind(1):
            state = self.cell(x_t, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs, 1), state


FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "lstm-ln-res": lambda: LSTM(2, 8, 2, batch_first=True, dropout=0.1, layer_norm=True, residual=True),
    "gru-ln-bi": lambda: GRU(2, 8, batch_first=True, bidirectional=True, layer_norm=True),
    "lstm-off-proj": lambda: LSTM(2, 8, batch_first=True, proj_size=4),
    "lstmcell-ln": lambda: CellRNN(LSTMCell(2, 8, layer_norm=True)),
    "grucell-ln": lambda: CellRNN(GRUCell(2, 8, layer_norm=True)),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_fit_then_checkpoint_roundtrip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyRNNRegressor(rnn=FACTORIES[name]())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(model, adding_loader(num_samples=24, seq_len=6))
    assert trainer.global_step == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "layer_norm" in k) or (
        "ln" not in name
    )
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    fresh = TinyRNNRegressor(rnn=FACTORIES[name]())
    checkpoint = torch.load(path, weights_only=True)
    fresh.load_state_dict(checkpoint["state_dict"])
    model.eval()
    fresh.eval()
    x, _ = next(iter(adding_loader(num_samples=4, seq_len=6)))
    assert torch.equal(model(x), fresh(x))
