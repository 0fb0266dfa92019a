"""`StableRNN` converts a LightningModule's recurrent modules in `setup`: real `Trainer.fit` runs."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.callbacks import AdaptiveGradientClipping, StableRNN
from rnn_stability.data import adding_problem
from rnn_stability.nn import LSTM
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class DropoutRegressor(TinyRNNRegressor):
    def __init__(self) -> None:
        super().__init__(nn.LSTM(2, 8, num_layers=2, dropout=0.3, batch_first=True))


class EvalRegressor(TinyRNNRegressor):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))


def shuffled_loader() -> DataLoader:
    x, y = adding_problem(64, 12, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


def test_fit_converts_before_the_optimizer_is_built(tmp_path: Path) -> None:
    model, callback = TinyRNNRegressor(), StableRNN(layer_norm=True)
    trainer = quiet_trainer(tmp_path, callbacks=[callback], max_steps=6)
    trainer.fit(model, adding_loader())
    assert callback.converted == ["rnn"] and isinstance(model.rnn, LSTM) and model.rnn.layer_norm
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    gain = model.rnn.layer_norm_hh_l0.weight
    assert id(gain) in optimized and not torch.equal(gain, torch.ones_like(gain))  # it trained
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_options_off_run_is_bit_identical(tmp_path: Path) -> None:
    def weights(callbacks: list[Any]) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = DropoutRegressor()
        quiet_trainer(tmp_path, callbacks=callbacks, max_steps=5).fit(model, shuffled_loader())
        return [p.detach() for p in model.parameters()]

    plain, converted = weights([]), weights([StableRNN()])
    assert all(torch.equal(a, b) for a, b in zip(plain, converted, strict=True))


def test_resume_fit_twice_and_evaluate_keep_the_trained_layer_norm(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = EvalRegressor()
    trainer = quiet_trainer(
        tmp_path, callbacks=[StableRNN(layer_norm=True), checkpoint], enable_checkpointing=True, max_steps=4
    )
    trainer.fit(model, adding_loader())
    trained = model.rnn.layer_norm_hh_l0.weight.detach().clone()
    # validate / test / a second fit call `setup` again: the trained layer norm is kept.
    trainer.validate(model, adding_loader(), verbose=False)
    assert torch.equal(model.rnn.layer_norm_hh_l0.weight, trained)
    quiet_trainer(tmp_path, callbacks=[StableRNN(layer_norm=True)], max_steps=2).fit(model, adding_loader())
    assert not torch.equal(model.rnn.layer_norm_hh_l0.weight, trained)
    # Resuming a fresh, unconverted model: setup converts it before the checkpoint's weights load.
    resumed = TinyRNNRegressor()
    trainer = quiet_trainer(tmp_path, callbacks=[StableRNN(layer_norm=True)], max_steps=4)
    trainer.fit(resumed, adding_loader(), ckpt_path=checkpoint.last_model_path)
    assert trainer.global_step == 4 and torch.equal(resumed.rnn.layer_norm_hh_l0.weight, trained)


def test_include_exclude_and_warning(tmp_path: Path) -> None:
    callback = StableRNN(layer_norm=True, exclude="rnn")
    with pytest.warns(UserWarning, match="left no recurrent module"):
        quiet_trainer(tmp_path, callbacks=[callback], max_steps=1).fit(TinyRNNRegressor(), adding_loader())
    assert callback.converted == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"layer_norm": 1}, "layer_norm"), ({"include": [1]}, "include"), ({"hidden_size": 3}, "hidden_size")],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        StableRNN(**kwargs)


def test_unknown_layer_norm_variant() -> None:
    with pytest.raises(ValueError, match="layer_norm"):
        StableRNN(layer_norm="sideways")  # type: ignore[arg-type]


def test_pickle_and_lightning_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    twin = pickle.loads(pickle.dumps(StableRNN(layer_norm=True, include="rnn")))
    assert twin.options == {"layer_norm": True, "residual": False} and twin.include == ["rnn"]
    monkeypatch.setattr("sys.argv", ["cli"])
    args = ["--trainer.logger=false", "--trainer.callbacks+=rnn_stability.callbacks.StableRNN"]
    args += ["--trainer.callbacks.layer_norm=true", "--trainer.callbacks.residual=true"]
    cli = LightningCLI(
        TinyRNNRegressor,
        run=False,
        args=[*args, "--trainer.callbacks.exclude=[head]"],
        save_config_callback=None,
    )
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, StableRNN)]
    assert callback.options == {"layer_norm": True, "residual": True} and callback.exclude == ["head"]
    # The variant names pass the CLI's type check too (the annotation once read `bool` and rejected them).
    for variant in ("separate", "joint", "recurrent"):
        variant_args = [*args[:2], f"--trainer.callbacks.layer_norm={variant}"]
        cli = LightningCLI(TinyRNNRegressor, run=False, args=variant_args, save_config_callback=None)
        (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, StableRNN)]
        assert callback.options == {"layer_norm": variant, "residual": False}


def test_pytorch_lightning_package_fit_and_fsdp_refusal(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = TinyRNNRegressor()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.inner.training_step(batch, batch_idx)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    model, callback = Model(), StableRNN(layer_norm=True)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, adding_loader())
    assert callback.converted == ["inner.rnn"] and model.inner.rnn.layer_norm
    # The FSDP refusal recognises pytorch_lightning's strategy class too.
    fake = SimpleNamespace(strategy=pl.strategies.FSDPStrategy(), gradient_clip_val=None)
    with pytest.raises(Exception, match="does not support `FSDPStrategy`"):
        AdaptiveGradientClipping().setup(fake, model, "fit")  # type: ignore[arg-type]
