"""RNNInitializer on real Trainer.fit runs: fresh fit, resume, repeated fit, seeding, mappings, CLI."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from rnn_stability.callbacks import RNNInitializer
from rnn_stability.functional import init_rnn_
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class TwoRNNRegressor(TinyRNNRegressor):
    """An encoder LSTM, a ReLU RNN and a GRU cell that is never called (only its weights matter here)."""

    def __init__(self, lr: float = 0.0) -> None:
        super().__init__(nn.LSTM(2, 8, batch_first=True), lr=lr)
        self.relu_rnn = nn.RNN(2, 8, nonlinearity="relu")
        self.extra = nn.ModuleDict({"cell": nn.GRUCell(2, 8)})


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.state_dict().items()}


def _fit(model: L.LightningModule, callback: RNNInitializer, tmp_path: Path, **fit_kwargs: Any) -> L.Trainer:
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[callback])
    trainer.fit(model, adding_loader(num_samples=8), **fit_kwargs)
    return trainer


def test_initialises_on_fresh_fit(tmp_path: Path) -> None:
    model = TinyRNNRegressor(
        nn.LSTM(2, 8, batch_first=True, num_layers=2), lr=0.0
    )  # lr 0: fit keeps the init
    expected = init_rnn_(
        nn.LSTM(2, 8, batch_first=True, num_layers=2),
        "chrono",
        max_timescale=12,
        generator=torch.Generator().manual_seed(3),
    )
    callback = RNNInitializer("chrono", max_timescale=12, seed=3)
    _fit(model, callback, tmp_path)
    for name, value in expected.state_dict().items():
        assert torch.equal(model.rnn.state_dict()[name], value), name
    assert callback.applied and callback.initialized == [("rnn", "LSTM", "chrono")]
    assert callback.state_dict() == {"applied": True, "initialized": [["rnn", "LSTM", "chrono"]]}


@pytest.mark.parametrize("callback_in_checkpoint", [True, False])
def test_resume_from_checkpoint_never_initialises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, callback_in_checkpoint: bool
) -> None:
    first = TinyRNNRegressor(lr=0.05)
    callbacks = [RNNInitializer(seed=0)] if callback_in_checkpoint else []
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=callbacks)
    trainer.fit(first, adding_loader(num_samples=16))
    ckpt = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(ckpt)
    trained = _weights(first)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("init_rnn_ called on resume")

    monkeypatch.setattr("rnn_stability.callbacks.rnn_initializer.init_rnn_", fail)
    # same configuration (same state_key): its state is restored; a different one only sees trainer.ckpt_path
    callback = (
        RNNInitializer(seed=0) if callback_in_checkpoint else RNNInitializer("chrono", max_timescale=12)
    )
    resumed = TinyRNNRegressor()
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[callback])  # already at step 2: no training
    trainer.fit(resumed, adding_loader(num_samples=16), ckpt_path=str(ckpt))
    for name, value in _weights(resumed).items():
        assert torch.equal(value, trained[name]), name
    assert callback.applied
    assert callback.initialized == ([("rnn", "LSTM", "orthogonal")] if callback_in_checkpoint else [])


def test_runs_once_and_respects_manual_applied_flag(tmp_path: Path) -> None:
    model, callback = TinyRNNRegressor(lr=0.0), RNNInitializer(seed=0)
    _fit(model, callback, tmp_path)
    with torch.no_grad():
        model.rnn.weight_hh_l0.fill_(0.5)
    _fit(model, callback, tmp_path)  # a second fit with the same callback
    assert bool((model.rnn.weight_hh_l0 == 0.5).all())

    loaded, manual = TinyRNNRegressor(lr=0.0), RNNInitializer(seed=0)
    before = _weights(loaded)
    manual.applied = True  # e.g. weights came from Model.load_from_checkpoint
    _fit(loaded, manual, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in _weights(loaded).items())
    assert manual.initialized == []


def test_identical_weights_across_ranks_with_seed_or_seed_everything(tmp_path: Path) -> None:
    """Two "ranks": different global RNG states before the fit, same callback configuration."""
    results = []
    for rank_rng in (10, 20):
        torch.manual_seed(rank_rng)
        model = TinyRNNRegressor(nn.GRU(2, 8, batch_first=True, bidirectional=True), lr=0.0)
        _fit(model, RNNInitializer("orthogonal", seed=42), tmp_path)
        results.append(_weights(model.rnn))
    for rank_rng in (10, 20):  # seed=None: the global RNG, made identical by seed_everything
        torch.manual_seed(rank_rng)
        model = TinyRNNRegressor(nn.GRU(2, 8, batch_first=True, bidirectional=True), lr=0.0)
        L.seed_everything(5, verbose=False)
        _fit(model, RNNInitializer("orthogonal"), tmp_path)
        results.append(_weights(model.rnn))
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name
        assert torch.equal(results[2][name], results[3][name]), name
    assert not torch.equal(results[0]["weight_hh_l0"], results[2]["weight_hh_l0"])


def test_pattern_mapping_and_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = TwoRNNRegressor()
    untouched = _weights(model.extra)
    callback = RNNInitializer(
        {"rnn": "chrono", "relu_*": "irnn", "decoder.*": "xavier"}, max_timescale=12, seed=0
    )
    with (
        caplog.at_level(logging.INFO),
        pytest.warns(UserWarning, match="'decoder.\\*' of `scheme` matches no"),
    ):
        _fit(model, callback, tmp_path)
    assert callback.initialized == [("rnn", "LSTM", "chrono"), ("relu_rnn", "RNN", "irnn")]
    assert torch.equal(model.relu_rnn.weight_hh_l0, torch.eye(8))
    assert all(torch.equal(v, untouched[k]) for k, v in _weights(model.extra).items())
    table = caplog.text
    assert "RNNInitializer (seed 0)" in table and "chrono (max_timescale=12)" in table
    assert (
        "relu_rnn" in table and "RNN (RNN_RELU)" in table and "extra.cell" in table and "unchanged" in table
    )


def test_inapplicable_scheme_raises_before_touching_anything(tmp_path: Path) -> None:
    model = TwoRNNRegressor()
    before = _weights(model)
    with pytest.raises(TypeError, match="irnn"):
        _fit(model, RNNInitializer("irnn"), tmp_path)  # the LSTM comes first and cannot take IRNN
    assert all(torch.equal(v, before[k]) for k, v in _weights(model).items())


def test_warns_without_recurrent_modules(tmp_path: Path) -> None:
    model = TinyRNNRegressor()
    model.rnn = nn.Sequential()  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="no recurrent module"):
        RNNInitializer().on_fit_start(quiet_trainer(tmp_path), model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "kaiming"}, "`scheme` must be one of"),
        ({"scheme": {}}, "non-empty dict"),
        ({"scheme": {"rnn": "bad"}}, "`scheme` maps 'rnn' to 'bad'"),
        ({"scheme": "chrono"}, "`max_timescale` is required"),
        ({"scheme": {"a": "chrono"}}, "`max_timescale` is required"),
        ({"scheme": "chrono", "max_timescale": 1}, "`max_timescale` must be"),
        ({"max_timescale": -3.0}, "`max_timescale` must be"),
        ({"gain": 0}, "`gain` must be"),
        ({"forget_bias": float("inf")}, "`forget_bias` must be"),
        ({"seed": -1}, "`seed` must be"),
        ({"seed": 1.5}, "`seed` must be"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RNNInitializer(**kwargs)


def test_state_round_trip_and_key() -> None:
    callback = RNNInitializer(seed=1)
    callback.load_state_dict({"applied": True, "initialized": [["rnn", "LSTM", "orthogonal"]]})
    assert callback.applied and callback.initialized == [("rnn", "LSTM", "orthogonal")]
    assert callback.state_key != RNNInitializer(seed=2).state_key


def test_lightning_cli_yaml(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: rnn_stability.callbacks.RNNInitializer\n"
        "      init_args:\n"
        "        scheme: {rnn: chrono, 'enc*': orthogonal}\n"
        "        max_timescale: 50\n"
        "        forget_bias: 2.0\n"
        "        seed: 7\n"
    )
    cli = LightningCLI(
        TinyRNNRegressor,
        run=False,
        args=["--config", str(config), "--trainer.logger=false", "--trainer.enable_checkpointing=false"],
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, RNNInitializer)]
    assert callback.scheme == {"rnn": "chrono", "enc*": "orthogonal"}
    assert (callback.max_timescale, callback.forget_bias, callback.seed) == (50, 2.0, 7)
