"""AdaptiveGradientClipping: exact resume from a checkpoint, LightningCLI construction, host syncs per step."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from rnn_stability.callbacks import AdaptiveGradientClipping
from rnn_stability.functional import force_sync_free
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class Thresholds(Callback):
    def __init__(self, clipper: AdaptiveGradientClipping) -> None:
        self.clipper = clipper
        self.by_step: dict[int, float] = {}

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        assert self.clipper.last_record is not None
        self.by_step[trainer.global_step] = self.clipper.last_record.threshold.item()


def _run(
    tmp_path: Any, options: dict[str, Any], max_steps: int, ckpt_path: str | None = None, save: bool = False
):
    L.seed_everything(0, verbose=False)
    model = TinyRNNRegressor()
    clipper = AdaptiveGradientClipping(**options)
    thresholds = Thresholds(clipper)
    callbacks: list[Callback] = [clipper, thresholds]
    if save:
        callbacks.append(
            ModelCheckpoint(dirpath=tmp_path.parent / "ckpt", every_n_train_steps=10, save_top_k=-1)
        )
    trainer = quiet_trainer(tmp_path, max_steps=max_steps, callbacks=callbacks, enable_checkpointing=save)
    trainer.fit(model, adding_loader(num_samples=80, batch_size=8), ckpt_path=ckpt_path)  # 10 batches/epoch
    return model, clipper, thresholds


@pytest.mark.parametrize(
    "options",
    [
        dict(strategy="percentile", percentile=30.0, window_size=6),
        dict(strategy="zscore", alpha=0.5, warmup_steps=3, z_threshold=0.1),
    ],
)
def test_resume_gives_the_thresholds_and_weights_of_an_uninterrupted_run(tmp_path, options):
    straight_model, straight, straight_thresholds = _run(tmp_path / "a", options, 20)
    _run(tmp_path / "b", options, 10, save=True)
    ckpt = str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt")
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any("AdaptiveGradientClipping" in key for key in state)
    resumed_model, resumed, resumed_thresholds = _run(tmp_path / "c", options, 20, ckpt_path=ckpt, save=True)

    assert sorted(resumed_thresholds.by_step) == list(range(10, 20))
    for step, threshold in resumed_thresholds.by_step.items():
        assert threshold == straight_thresholds.by_step[step], step  # bit-identical
    assert straight.num_clipped_steps > 0
    assert repr(resumed.state_dict()) == repr(straight.state_dict())
    for (name, a), (_, b) in zip(
        straight_model.named_parameters(), resumed_model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_lightning_cli_builds_the_callback_from_config(monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog"])
    config = {
        "trainer": {
            "logger": False,
            "enable_checkpointing": False,
            "callbacks": [
                {
                    "class_path": "rnn_stability.callbacks.AdaptiveGradientClipping",
                    "init_args": {
                        "strategy": "agc",
                        "clip_factor": 0.02,
                        "exclude": ["head"],
                        "log_every_n_steps": 5,
                    },
                }
            ],
        },
        "model": {"hidden_size": 4},
    }
    cli = LightningCLI(TinyRNNRegressor, args=config, run=False, save_config_callback=None)
    clippers = [cb for cb in cli.trainer.callbacks if isinstance(cb, AdaptiveGradientClipping)]
    assert len(clippers) == 1
    assert (clippers[0].strategy, clippers[0].clip_factor, clippers[0].exclude) == ("agc", 0.02, ("head",))
    assert clippers[0].log_every_n_steps == 5
    bad = {"trainer": {"callbacks": [{"class_path": "rnn_stability.callbacks.AdaptiveGradientClipping",
                                      "init_args": {"strategy": "median"}}]}}  # fmt: skip
    with pytest.raises((ValueError, SystemExit)):
        LightningCLI(TinyRNNRegressor, args=bad, run=False, save_config_callback=None)


SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


@pytest.mark.parametrize(("skip_nonfinite", "expected"), [(True, 1), (False, 0)])
def test_host_syncs_per_step(monkeypatch, skip_nonfinite, expected):
    # the accelerator path, counted on the CPU (where the clipping functions read values on purpose: free there)
    counts = {"calls": 0, "syncs": 0}
    clipper = AdaptiveGradientClipping(strategy="zscore", warmup_steps=2, skip_nonfinite=skip_nonfinite)
    active = [False]
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if active[0]:
                counts["syncs"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    hook = clipper.on_before_optimizer_step

    def counted_hook(*args: Any) -> None:
        active[0] = True
        counts["calls"] += 1
        try:
            hook(*args)
        finally:
            active[0] = False

    monkeypatch.setattr(clipper, "on_before_optimizer_step", counted_hook)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_steps=5, callbacks=[clipper], log_every_n_steps=100)
    with force_sync_free():
        trainer.fit(TinyRNNRegressor(), adding_loader())
    assert counts["calls"] == 5
    assert counts["syncs"] == expected * 5
