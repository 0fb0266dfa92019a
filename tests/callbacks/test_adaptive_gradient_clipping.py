"""AdaptiveGradientClipping in real ``Trainer.fit`` runs: strategies, non-finite guard, AMP, accumulation, logs."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn

import rnn_stability.callbacks.adaptive_gradient_clipping as agc_module
from rnn_stability.callbacks import AdaptiveGradientClipping, ClipRecord
from rnn_stability.functional import total_grad_norm
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer

LOG_KEYS = [
    "grad_clip/threshold",
    "grad_clip/pre_clip_norm",
    "grad_clip/post_clip_norm",
    "grad_clip/clipped_fraction",
    "grad_clip/skipped_steps",
]


class RecordAfter(Callback):
    """Collects the clipper's record and the gradient norm as the optimizer will see it (runs after it)."""

    def __init__(self, clipper: AdaptiveGradientClipping) -> None:
        self.clipper = clipper
        self.records: list[ClipRecord] = []
        self.seen_norms: list[float] = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        assert self.clipper.last_record is not None
        self.records.append(self.clipper.last_record)
        params = [p for p in pl_module.parameters() if p.grad is not None]
        self.seen_norms.append(total_grad_norm(params).item() if params else 0.0)


def _fit(
    callback: AdaptiveGradientClipping,
    model: L.LightningModule | None = None,
    extra: tuple[Callback, ...] = (),
    **trainer_kwargs: Any,
):
    L.seed_everything(0, verbose=False)
    model = model or TinyRNNRegressor()
    recorder = RecordAfter(callback)
    trainer = quiet_trainer(callbacks=[callback, recorder, *extra], **trainer_kwargs)
    trainer.fit(model, adding_loader())
    return trainer, model, recorder


@pytest.mark.parametrize(
    ("options", "expect_clipping"),
    [
        (dict(strategy="norm", max_norm=0.05), True),
        (dict(strategy="value", clip_value=0.01), True),
        (dict(strategy="percentile", percentile=10.0, window_size=4), True),
        (dict(strategy="zscore", warmup_steps=2, z_threshold=0.1), True),
        (dict(strategy="agc", clip_factor=0.001, exclude=["head"]), True),
        (dict(strategy="norm", max_norm=1e6), False),
    ],
)
def test_every_strategy_clips_in_a_real_step(options, expect_clipping):
    clipper = AdaptiveGradientClipping(**options)
    _, _, recorder = _fit(clipper, max_steps=6)
    assert clipper.num_steps == 6 and clipper.num_skipped_steps == 0
    assert (clipper.num_clipped_steps > 0) is expect_clipping
    for record, seen in zip(recorder.records, recorder.seen_norms, strict=True):
        pre, post = record.pre_clip_norm.item(), record.post_clip_norm.item()
        assert post <= pre * (1 + 1e-6)
        assert seen == pytest.approx(post, rel=1e-4)  # what the optimizer gets is the post-clip norm
        assert bool(record.clipped) == (post < pre)
        if options["strategy"] in ("norm", "percentile", "zscore"):
            assert post <= record.threshold.item() * (1 + 1e-5) or post == pre
    if options["strategy"] == "norm" and expect_clipping:
        assert all(r.post_clip_norm.item() == pytest.approx(0.05, rel=1e-4) for r in recorder.records)


@pytest.mark.parametrize(
    "make_exclude",
    [lambda: ["head"], lambda: (name for name in ["head"])],  # a generator must not be consumed by the check
    ids=["list", "generator"],
)
def test_agc_exclude_leaves_the_head_untouched(monkeypatch, make_exclude):
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Spy(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.append((pl_module.head.weight.grad.clone(), pl_module.rnn.weight_hh_l0.grad.clone()))

    L.seed_everything(0, verbose=False)
    model = TinyRNNRegressor()
    clipper = AdaptiveGradientClipping(strategy="agc", clip_factor=1e-4, exclude=make_exclude())
    assert clipper.exclude == ("head",)
    trainer = quiet_trainer(max_steps=2, callbacks=[Spy(), clipper, RecordAfter(clipper)])
    before: list[torch.Tensor] = []
    monkeypatch.setattr(
        agc_module,
        "adaptive_grad_clip_",
        lambda named, *a, **k: (before.append(model.head.weight.grad.clone()), _real_agc(named, *a, **k)),
    )
    trainer.fit(model, adding_loader())
    assert len(before) == 2
    head_after = model.head.weight.grad  # grads of the last step are still there after fit
    assert torch.equal(head_after, before[-1])
    assert not torch.equal(model.rnn.weight_hh_l0.grad, grads[-1][1])


_real_agc = agc_module.adaptive_grad_clip_


class NaNInjector(TinyRNNRegressor):
    """Puts a non-finite value into ``head.weight``'s gradient at the chosen global steps."""

    def __init__(self, bad_steps: set[int], value: float = math.nan) -> None:
        super().__init__()
        self.bad_steps, self.value = bad_steps, value

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.bad_steps:
            self.head.weight.grad[0, 0] = self.value


class Snapshots(Callback):
    """Parameters and Adam state before and after each training batch."""

    def __init__(self) -> None:
        self.before: dict[int, Any] = {}
        self.after: dict[int, Any] = {}

    @staticmethod
    def _snapshot(trainer: L.Trainer, module: L.LightningModule) -> Any:
        opt = trainer.optimizers[0]
        state = {
            name: {k: v.clone() for k, v in opt.state[p].items()}
            for name, p in module.named_parameters()
            if p in opt.state
        }
        return {n: p.detach().clone() for n, p in module.named_parameters()}, state

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = self._snapshot(trainer, pl_module)


def _identical(a: Any, b: Any) -> bool:
    (pa, sa), (pb, sb) = a, b
    same_params = pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    same_state = sa.keys() == sb.keys() and all(
        sa[n].keys() == sb[n].keys() and all(torch.equal(sa[n][k], sb[n][k]) for k in sa[n]) for n in sa
    )
    return same_params and same_state


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_steps_are_skipped_bit_identically_and_counted(tmp_path, value):
    clipper = AdaptiveGradientClipping(strategy="percentile", window_size=5)
    snapshots = Snapshots()
    model = NaNInjector({2, 4, 5}, value)
    _, _, recorder = _fit(
        clipper,
        model,
        max_steps=8,
        logger=CSVLogger(tmp_path, name="nan"),
        extra=(snapshots,),
    )
    assert clipper.num_skipped_steps == 3 and clipper.num_steps == 8
    for step in range(8):
        unchanged = _identical(snapshots.before[step], snapshots.after[step])
        assert unchanged is (step in {2, 4, 5}), step
    adam = model.trainer.optimizers[0].state[model.head.weight]
    assert adam["step"].item() == 5  # three skipped steps did not advance Adam's counter
    window = clipper.state_dict()["clippers"][0]["window"]
    assert len(window) == 5 and all(math.isfinite(x) for x in window)  # non-finite norms kept out
    rows = list(csv.DictReader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    assert [float(r["grad_clip/skipped_steps"]) for r in rows if r.get("grad_clip/skipped_steps")][-1] == 3.0


def test_consecutive_nonfinite_steps_raise_naming_the_parameter():
    clipper = AdaptiveGradientClipping(strategy="norm", max_consecutive_nonfinite=3)
    model = NaNInjector({1, 3, 4, 5, 6, 7})
    with pytest.raises(RuntimeError, match=r"3 consecutive .*global step 5.*\['head.weight'\]"):
        _fit(clipper, model, max_steps=10)
    assert clipper.num_skipped_steps == 4  # steps 1, 3, 4 skipped; the error is raised at step 5


def test_skip_nonfinite_false_lets_nonfinite_through_without_counting():
    clipper = AdaptiveGradientClipping(strategy="zscore", warmup_steps=2, skip_nonfinite=False)
    model = NaNInjector({3})
    _fit(clipper, model, max_steps=5)
    assert clipper.num_skipped_steps == 0
    assert math.isnan(model.head.weight[0, 0].item())  # the user's choice: corrupted weights
    # step 3 is NaN, and so is step 4 (computed with the corrupted weights): both stay out of the statistics
    assert clipper.state_dict()["clippers"][0]["count"] == 3


def test_accumulated_gradient_is_clipped_once_per_window(monkeypatch):
    calls: list[float] = []
    real = agc_module.clip_grads_with_norm_

    def spy(params, max_norm, total_norm):
        calls.append(total_norm.item())
        return real(params, max_norm, total_norm)

    monkeypatch.setattr(agc_module, "clip_grads_with_norm_", spy)
    micro_norms: list[float] = []

    class Accum(TinyRNNRegressor):
        def on_after_backward(self) -> None:
            micro_norms.append(total_grad_norm(list(self.parameters())).item())

    clipper = AdaptiveGradientClipping(strategy="norm", max_norm=0.05)
    _fit(clipper, Accum(), max_steps=3, accumulate_grad_batches=2)
    assert len(calls) == 3 and len(micro_norms) == 6 and clipper.num_steps == 3
    assert calls == pytest.approx(
        micro_norms[1::2], rel=1e-6
    )  # the accumulated gradient after 2 micro-batches
    assert calls != pytest.approx(micro_norms[0::2], rel=1e-3)


class _Flat(nn.Module):
    """Linear encoder standing in for the LSTM: oneDNN has no fp16/bf16 LSTM kernel on this CPU."""

    hidden_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(24, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.lin(x.flatten(1)).unsqueeze(1), None


def test_bf16_mixed_on_cpu():
    clipper = AdaptiveGradientClipping(strategy="norm", max_norm=0.05)
    model = TinyRNNRegressor()
    model.rnn = _Flat()
    _, _, recorder = _fit(clipper, model, max_steps=3, precision="bf16-mixed")
    assert clipper.num_clipped_steps == 3 and clipper.num_skipped_steps == 0
    assert all(math.isfinite(r.pre_clip_norm.item()) for r in recorder.records)
    assert recorder.seen_norms == pytest.approx([0.05] * 3, rel=1e-3)


def test_fp16_grad_scaler_skips_are_left_to_the_scaler():
    # Lightning turns precision="16-mixed" into bf16 on CPU; an explicit plugin gives a real GradScaler
    clipper = AdaptiveGradientClipping(strategy="zscore", warmup_steps=2, max_consecutive_nonfinite=2)
    model = NaNInjector({1, 2, 3}, math.inf)
    model.rnn = _Flat()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**4))
    trainer, _, _ = _fit(clipper, model, max_steps=6, plugins=[plugin])
    assert clipper.num_steps == 6 and clipper.num_skipped_steps == 0  # 3 Inf steps in a row, no error
    assert trainer.precision_plugin.scaler.get_scale() == 2.0  # the scaler halved its scale 3 times...
    assert trainer.optimizers[0].state[model.head.weight]["step"].item() == 3  # ...and skipped those steps
    assert clipper.state_dict()["clippers"][0]["count"] == 3  # Inf norms kept out of the statistics


def test_fused_optimizer_under_a_grad_scaler_is_refused():
    class Fused(TinyRNNRegressor):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2, fused=True)

    model = Fused()
    model.rnn = _Flat()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(RuntimeError, match="unscales gradients inside `step\\(\\)`"):
        _fit(AdaptiveGradientClipping(), model, max_steps=1, plugins=[plugin])


def test_csv_logger_gets_the_documented_keys(tmp_path):
    clipper = AdaptiveGradientClipping(strategy="zscore", warmup_steps=2)
    _fit(clipper, max_steps=6, logger=CSVLogger(tmp_path, name="keys"), log_every_n_steps=2)
    rows = list(csv.DictReader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("grad_clip/pre_clip_norm")]
    assert [int(r["step"]) for r in logged] == [1, 3, 5]
    for key in LOG_KEYS:
        assert key in rows[0].keys()
    # step 1 is still in ZClip's two-step warm-up: no threshold in force, none logged (rather than inf)
    assert [int(r["step"]) for r in logged if r["grad_clip/threshold"]] == [3, 5]
    for row in logged:
        assert all(math.isfinite(float(row[key])) for key in LOG_KEYS if row[key])


@pytest.mark.parametrize("interval", [3, 4])
def test_own_interval_logs_fresh_values_only_on_its_steps(tmp_path, interval):
    clipper = AdaptiveGradientClipping(strategy="zscore", warmup_steps=2, log_every_n_steps=interval)
    _, _, recorder = _fit(clipper, max_steps=8, logger=CSVLogger(tmp_path, name="iv"), log_every_n_steps=2)
    rows = list(csv.DictReader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("grad_clip/pre_clip_norm")]
    steps = [s for s in range(8) if (s + 1) % interval == 0]
    assert [int(r["step"]) for r in logged] == steps
    for row, step in zip(logged, steps, strict=True):  # fresh values, not repeats of an earlier step
        assert float(row["grad_clip/pre_clip_norm"]) == pytest.approx(
            recorder.records[step].pre_clip_norm.item()
        )


def test_default_strategy_is_autoclip_as_the_guides_advise():
    clipper = AdaptiveGradientClipping()
    assert (clipper.strategy, clipper.percentile, clipper.window_size) == ("percentile", 10.0, 1000)
    _fit(clipper, max_steps=3)
    assert isinstance(clipper.last_record.threshold, torch.Tensor) and clipper.num_steps == 3


def test_gradient_clip_val_warns_once():
    clipper = AdaptiveGradientClipping()
    with pytest.warns(UserWarning, match="gradient_clip_val=0.5"):
        _fit(clipper, max_steps=1, gradient_clip_val=0.5)


class TwoOptimizers(TinyRNNRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        for opt in self.optimizers():
            opt.zero_grad()
            loss = nn.functional.mse_loss(self(x), y)
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.rnn.parameters(), 1e-2), torch.optim.SGD(self.head.parameters(), 1e-2)


def test_multiple_optimizers_keep_separate_state(tmp_path):
    clipper = AdaptiveGradientClipping(strategy="percentile", window_size=3)
    _, _, recorder = _fit(clipper, TwoOptimizers(), max_steps=6, logger=CSVLogger(tmp_path, name="two"))
    assert sorted(clipper.state_dict()["clippers"]) == [0, 1]
    assert [r.optimizer_idx for r in recorder.records] == [0, 1] * 3
    windows = [clipper.state_dict()["clippers"][i]["window"] for i in (0, 1)]
    assert windows[0] == pytest.approx([r.pre_clip_norm.item() for r in recorder.records[0::2]])
    assert windows[1] == pytest.approx([r.pre_clip_norm.item() for r in recorder.records[1::2]])
    header = next(csv.reader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    assert "grad_clip/threshold/optimizer_0" in header and "grad_clip/threshold/optimizer_1" in header


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(strategy="adaptive"), ValueError, "`strategy` must be one of"),
        (dict(max_norm=0.0), ValueError, "`max_norm` must be a positive"),
        (dict(clip_value=-1.0), ValueError, "`clip_value` must be a positive"),
        (dict(percentile=120.0), ValueError, "`percentile` must be a float in"),
        (dict(window_size=0), ValueError, "`window_size` must be a positive int"),
        (dict(alpha=1.5), ValueError, "`alpha` must be a float in"),
        (dict(z_threshold=0), ValueError, "`z_threshold` must be a positive"),
        (dict(warmup_steps=0), ValueError, "`warmup_steps` must be a positive int"),
        (dict(clip_factor=0.0), ValueError, "`clip_factor` must be a positive"),
        (dict(eps=0.0), ValueError, "`eps` must be a positive"),
        (dict(exclude="head"), TypeError, "`exclude` must be a list"),
        (dict(skip_nonfinite=1), TypeError, "`skip_nonfinite` must be a bool"),
        (dict(max_consecutive_nonfinite=0), ValueError, "`max_consecutive_nonfinite` must be a positive int"),
        (dict(log_every_n_steps=0), ValueError, "`log_every_n_steps` must be a positive int"),
    ],
)
def test_invalid_arguments_name_the_argument(options, error, message):
    with pytest.raises(error, match=message):
        AdaptiveGradientClipping(**options)


def test_fsdp_is_refused():
    from lightning.pytorch.strategies import FSDPStrategy

    class FakeTrainer:
        strategy = FSDPStrategy.__new__(FSDPStrategy)
        gradient_clip_val = None

    with pytest.raises(Exception, match="does not support `FSDPStrategy`"):
        AdaptiveGradientClipping().setup(FakeTrainer(), TinyRNNRegressor(), "fit")  # type: ignore[arg-type]
