"""GradientNormMonitor in real ``Trainer.fit`` runs: logged keys and values, pre/post clip, groups, alerts."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from rnn_stability.callbacks import AdaptiveGradientClipping, GradientNormMonitor
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


def _fit_logged(
    tmp_path: Path, model: Any, callbacks: list[Any], **trainer_kwargs: Any
) -> dict[int, dict[str, float]]:
    """Fit with a CSVLogger and return, per logged step, the non-empty metrics of that step."""
    torch.manual_seed(0)
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer_kwargs.setdefault("max_steps", 4)
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, adding_loader())
    rows: dict[int, dict[str, float]] = {}
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            rows.setdefault(step, {}).update({k: float(v) for k, v in row.items() if v != ""})
    return rows


class _ReferenceClipping(TinyRNNRegressor):
    """Clips in ``configure_gradient_clipping`` with torch's own function and records the reference numbers."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.reference: dict[int, dict[str, Any]] = {}

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, **kwargs: Any
    ) -> None:
        grads = {name: p.grad.detach().clone() for name, p in self.named_parameters()}
        weights = {name: p.detach().clone() for name, p in self.named_parameters()}
        pre = torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val).item()
        post = torch.nn.utils.clip_grad_norm_(self.parameters(), math.inf).item()
        self.reference[self.global_step] = dict(pre=pre, post=post, grads=grads, weights=weights)


def _norm(tensors: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors])).item()


def test_logged_keys_and_values_match_torch_reference(tmp_path: Path) -> None:
    model = _ReferenceClipping()
    monitor = GradientNormMonitor(log_every_n_steps=2, log_weight_norms=True, log_update_ratio=True)
    rows = _fit_logged(tmp_path, model, [monitor], gradient_clip_val=0.05, log_every_n_steps=2)
    expected = {
        f"{prefix}/{group}"
        for prefix in ("grad_norm", "weight_norm", "update_ratio")
        for group in ("rnn.l0", "head")
    } | {f"grad_norm/{k}" for k in ("total_pre_clip", "total_post_clip", "max", "nonfinite")}
    assert sorted(rows) == [1, 3]  # logged on Lightning's logging steps only
    final = {name: p.detach() for name, p in model.named_parameters()}
    for step, logged in rows.items():
        assert expected <= set(logged)
        ref = model.reference[step]
        assert ref["pre"] > 0.05  # clipping really happened, so pre and post differ
        assert logged["grad_norm/total_pre_clip"] == pytest.approx(ref["pre"], rel=1e-5)
        assert logged["grad_norm/total_post_clip"] == pytest.approx(ref["post"], rel=1e-5)
        assert logged["grad_norm/total_post_clip"] == pytest.approx(0.05, rel=1e-4)
        grads = ref["grads"]
        assert logged["grad_norm/max"] == pytest.approx(
            max(g.norm().item() for g in grads.values()), rel=1e-5
        )
        assert logged["grad_norm/nonfinite"] == 0
        for group, module in (("rnn.l0", "rnn"), ("head", "head")):  # a one-layer LSTM: one layer group
            members = [g for name, g in grads.items() if name.startswith(module + ".")]
            assert logged[f"grad_norm/{group}"] == pytest.approx(_norm(members), rel=1e-5)
    # weights after the last logged step are the final weights
    last, ref = rows[3], model.reference[3]
    for group, module in (("rnn.l0", "rnn"), ("head", "head")):
        after = [w for name, w in final.items() if name.startswith(module + ".")]
        before = [w for name, w in ref["weights"].items() if name.startswith(module + ".")]
        assert last[f"weight_norm/{group}"] == pytest.approx(_norm(after), rel=1e-5)
        delta = _norm([a - b for a, b in zip(after, before, strict=True)])
        assert last[f"update_ratio/{group}"] == pytest.approx(delta / _norm(before), rel=1e-4)


def test_trainer_gradient_clip_val_gives_pre_and_post(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rows = _fit_logged(tmp_path, TinyRNNRegressor(), [GradientNormMonitor()], gradient_clip_val=0.01)
    assert len(rows) == 4
    for logged in rows.values():
        assert logged["grad_norm/total_pre_clip"] > 0.02
        assert logged["grad_norm/total_post_clip"] == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("clipper_first", [True, False])
def test_with_a_clipping_callback_the_totals_have_one_name(tmp_path: Path, clipper_first: bool) -> None:
    torch.manual_seed(0)
    clipper, monitor = AdaptiveGradientClipping(strategy="norm", max_norm=0.01), GradientNormMonitor()
    callbacks: list[Any] = [clipper, monitor] if clipper_first else [monitor, clipper]
    rows = _fit_logged(tmp_path, TinyRNNRegressor(), callbacks)
    assert len(rows) == 4
    for logged in rows.values():
        # the clipper logs the totals; the monitor does not repeat them under its own names
        assert "grad_norm/total_pre_clip" not in logged and "grad_norm/total_post_clip" not in logged
        assert logged["grad_clip/pre_clip_norm"] > 0.02
        assert logged["grad_clip/post_clip_norm"] == pytest.approx(0.01, rel=1e-3)
        assert {"grad_norm/max", "grad_norm/nonfinite", "grad_norm/rnn.l0", "grad_norm/head"} <= set(logged)


def test_default_interval_follows_trainer_and_accumulation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rows = _fit_logged(
        tmp_path,
        TinyRNNRegressor(),
        [GradientNormMonitor()],
        log_every_n_steps=3,
        max_steps=6,
        accumulate_grad_batches=2,
    )
    assert sorted(step for step, logged in rows.items() if "grad_norm/total_pre_clip" in logged) == [2, 5]


@pytest.mark.parametrize("interval", [3, 4])
def test_own_interval_logs_fresh_values_only_on_its_steps(tmp_path: Path, interval: int) -> None:
    """An interval other than the Trainer's still logs each value once, at its own step, never stale."""
    model = _ReferenceClipping()
    monitor = GradientNormMonitor(log_every_n_steps=interval)
    rows = _fit_logged(tmp_path, model, [monitor], max_steps=8, log_every_n_steps=2, gradient_clip_val=1e9)
    logged = sorted(step for step, row in rows.items() if "grad_norm/total_pre_clip" in row)
    assert logged == [s for s in range(8) if (s + 1) % interval == 0]
    for step in logged:
        assert rows[step]["grad_norm/total_pre_clip"] == pytest.approx(model.reference[step]["pre"], rel=1e-5)


@pytest.mark.parametrize(
    ("granularity", "groups"),
    [
        ("total", []),  # its one group is `total_pre_clip`
        ("module", ["rnn.l0", "head"]),
        (
            "parameter",
            [
                "rnn.weight_ih_l0",
                "rnn.weight_hh_l0",
                "rnn.bias_ih_l0",
                "rnn.bias_hh_l0",
                "head.weight",
                "head.bias",
            ],
        ),
    ],
)
def test_granularity_groups_partition_the_total(tmp_path: Path, granularity: str, groups: list[str]) -> None:
    torch.manual_seed(0)
    monitor = GradientNormMonitor(granularity=granularity)
    rows = _fit_logged(tmp_path, TinyRNNRegressor(), [monitor], max_steps=2)
    for logged in rows.values():
        group_keys = {k for k in logged if k.startswith("grad_norm/")} - {
            f"grad_norm/{k}" for k in ("total_pre_clip", "total_post_clip", "max", "nonfinite")
        }
        assert group_keys == {f"grad_norm/{g}" for g in groups}
        if groups:
            squares = sum(logged[k] ** 2 for k in group_keys)
            assert math.sqrt(squares) == pytest.approx(logged["grad_norm/total_pre_clip"], rel=1e-5)


class _TwoOptimizers(TinyRNNRegressor):
    """Manual optimization with one optimizer for the recurrent layer and one for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        optimizers = self.optimizers()
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        return loss

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.rnn.parameters(), lr=0.1),
            torch.optim.SGD(self.head.parameters(), lr=0.1),
        ]


def test_multiple_optimizers_get_suffixed_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rows = _fit_logged(tmp_path, _TwoOptimizers(), [GradientNormMonitor()], max_steps=4)
    assert len(rows) == 2  # max_steps counts both optimizers' steps: 2 batches
    for logged in rows.values():
        assert {"grad_norm/rnn.l0/optimizer_0", "grad_norm/head/optimizer_1"} <= set(logged)
        assert "grad_norm/head/optimizer_0" not in logged
        for index, group in ((0, "rnn.l0"), (1, "head")):
            pre, post = (
                logged[f"grad_norm/total_pre_clip/optimizer_{index}"],
                logged[f"grad_norm/{group}/optimizer_{index}"],
            )
            assert pre == pytest.approx(post, rel=1e-6)
            assert logged[f"grad_norm/total_post_clip/optimizer_{index}"] == pytest.approx(pre, rel=1e-6)


def test_nonfinite_gradients_are_counted_and_warned(tmp_path: Path) -> None:
    class NaNGrad(TinyRNNRegressor):
        def on_after_backward(self) -> None:
            self.head.bias.grad.fill_(float("nan"))

    monitor = GradientNormMonitor(warn_above=1e6)
    with pytest.warns(UserWarning, match=r"exploding gradients at step 0: .*head=nan"):
        rows = _fit_logged(tmp_path, NaNGrad(), [monitor], max_steps=2)
    assert rows[0]["grad_norm/nonfinite"] == 1
    assert monitor.last_warning_step == {"below": None, "above": 0}


def test_total_granularity_warns_on_the_total_it_does_not_log_twice(tmp_path: Path) -> None:
    monitor = GradientNormMonitor(granularity="total", warn_above=0.0, log_every_n_steps=1)
    logger = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match=r"exploding gradients at step 0.*total="):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[monitor], logger=logger).fit(
            TinyRNNRegressor(), adding_loader()
        )
    with open(f"{logger.log_dir}/metrics.csv") as file:
        header = file.readline().strip().split(",")
    assert "grad_norm/total" not in header and "grad_norm/total_pre_clip" in header


def test_warnings_name_groups_and_step_and_are_rate_limited(tmp_path: Path) -> None:
    monitor = GradientNormMonitor(warn_below=1e6, warn_every_n_steps=3)
    trainer = quiet_trainer(tmp_path, max_steps=6, callbacks=[monitor])
    with pytest.warns(UserWarning) as record:
        trainer.fit(TinyRNNRegressor(), adding_loader())
    messages = [str(w.message) for w in record if "GradientNormMonitor" in str(w.message)]
    assert len(messages) == 2
    assert "vanishing gradients at step 0" in messages[0] and "step 3" in messages[1]
    assert "rnn.l0=" in messages[0] and "head=" in messages[0]
    assert monitor.last_warning_step["below"] == 3
    # the rate-limit state travels in checkpoints
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"][monitor.state_key]
    assert saved == {"last_warning_step": {"below": 3, "above": None}}


def test_no_warning_within_thresholds(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    monitor = GradientNormMonitor(warn_below=0.0, warn_above=1e9)
    quiet_trainer(tmp_path, max_steps=3, callbacks=[monitor]).fit(TinyRNNRegressor(), adding_loader())
    assert not [w for w in recwarn if "GradientNormMonitor" in str(w.message)]


def test_state_dict_round_trip_keeps_rate_limit() -> None:
    monitor = GradientNormMonitor(warn_above=1.0, warn_every_n_steps=10)
    monitor.last_warning_step["above"] = 7
    restored = GradientNormMonitor(warn_above=1.0, warn_every_n_steps=10)
    restored.load_state_dict(monitor.state_dict())
    assert restored.state_dict() == {"last_warning_step": {"below": None, "above": 7}}
    with pytest.warns(UserWarning, match="step 17"):
        restored._check_thresholds({"rnn": 5.0}, step=12)  # suppressed: within 10 steps of 7
        restored._check_thresholds({"rnn": 5.0}, step=17)
    assert restored.last_warning_step["above"] == 17


def test_hooks_removed_after_fit(tmp_path: Path) -> None:
    monitor = GradientNormMonitor(log_update_ratio=True)
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[monitor])
    trainer.fit(TinyRNNRegressor(), adding_loader())
    optimizer = trainer.optimizers[0]
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(log_every_n_steps=0), "log_every_n_steps"),
        (dict(log_every_n_steps=True), "log_every_n_steps"),
        (dict(granularity="layer"), "granularity"),
        (dict(norm_type=-1.0), "norm_type"),
        (dict(norm_type="2"), "norm_type"),
        (dict(warn_below=-1.0), "warn_below"),
        (dict(warn_above=float("nan")), "warn_above"),
        (dict(warn_below=2.0, warn_above=1.0), "warn_below"),
        (dict(warn_every_n_steps=0), "warn_every_n_steps"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        GradientNormMonitor(**kwargs)


def test_constructible_from_lightning_cli_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli"])

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  logger: false\n"
        "  callbacks:\n"
        "    - class_path: rnn_stability.callbacks.GradientNormMonitor\n"
        "      init_args:\n"
        "        log_every_n_steps: 10\n"
        "        granularity: parameter\n"
        "        log_update_ratio: true\n"
        "        warn_above: 100.0\n"
        "        warn_every_n_steps: 5\n"
    )
    cli = LightningCLI(TinyRNNRegressor, run=False, args=["--config", str(config)], save_config_callback=None)
    (monitor,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, GradientNormMonitor)]
    assert (monitor.log_every_n_steps, monitor.granularity, monitor.log_update_ratio) == (
        10,
        "parameter",
        True,
    )
    assert (monitor.warn_above, monitor.warn_below, monitor.warn_every_n_steps) == (100.0, None, 5)
