"""The regularisers in a real `Trainer.fit`: `weight_dropout` under 2-rank DDP and through a checkpoint,
`batch_norm`'s running statistics in training and in eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rnn_stability.callbacks import StableRNN
from rnn_stability.nn import GRU, LSTM
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer, run_two_rank_ddp

SCRIPT = Path(__file__).with_name("ddp_regularization_script.py")


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_weight_dropout_under_two_rank_ddp(tmp_path: Path) -> None:
    run_two_rank_ddp(SCRIPT, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["moved"] and rank0["weights"] == rank1["weights"]
    assert not any("raw" in key for key in rank0["keys"])


def test_weight_dropout_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def make() -> TinyRNNRegressor:
        return TinyRNNRegressor(LSTM(2, 8, 2, batch_first=True, weight_dropout=0.5, zoneout=0.1))

    model = make()
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(model, adding_loader(num_samples=24, seq_len=6))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert set(state) == set(TinyRNNRegressor(torch.nn.LSTM(2, 8, 2, batch_first=True)).state_dict())
    fresh = make()
    fresh.load_state_dict(state)
    x, _ = next(iter(adding_loader(num_samples=4, seq_len=6)))
    assert torch.equal(model.eval()(x), fresh.eval()(x))


@pytest.mark.parametrize("layer_norm", [False, "recurrent"])
def test_batch_norm_running_statistics_in_fit_and_eval(layer_norm, tmp_path: Path) -> None:
    torch.manual_seed(0)
    rnn = GRU(2, 8, batch_first=True, batch_norm=True, layer_norm=layer_norm)
    model = TinyRNNRegressor(rnn)
    norm = rnn.batch_norm_ih_l0
    assert int(norm.num_batches_tracked) == 0
    trainer = quiet_trainer(tmp_path, max_steps=4)
    loader = adding_loader(num_samples=32, seq_len=6)
    trainer.fit(model, loader)
    assert int(norm.num_batches_tracked) == 4
    assert not torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
    model.eval()
    x, _ = next(iter(loader))
    with torch.no_grad():
        first, second = model(x), model(x[:1])
    torch.testing.assert_close(first[:1], second)  # eval: no batch dependence


def test_stable_rnn_passes_the_options(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyRNNRegressor(torch.nn.LSTM(2, 8, batch_first=True))
    callback = StableRNN(weight_dropout=0.3, input_dropout=0.1)
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[callback])
    trainer.fit(model, adding_loader(num_samples=16, seq_len=6))
    assert callback.converted and model.rnn.weight_dropout == 0.3 and model.rnn.input_dropout == 0.1
