"""GradientFlowMonitor inside real Trainer.fit runs: schedule, logging, accumulation, no effect on training."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from rnn_stability.callbacks import GradientFlowMonitor
from rnn_stability.functional import FlowStatistics, flow_statistics, gradient_flow
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


class HookProbe(TinyRNNRegressor):
    """Records, per training step, how many forward hooks the LSTM carries while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_counts: list[int] = []

    def training_step(self, batch, batch_idx):
        self.hook_counts.append(len(self.rnn._forward_pre_hooks) + len(self.rnn._forward_hooks))
        return super().training_step(batch, batch_idx)


class RecordingLogger(Logger):
    """Keeps the grad_flow metrics it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None):
        flow = {k: v for k, v in metrics.items() if k.startswith("grad_flow/")}
        if flow:
            self.records.append((step, flow))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_measures_every_n_steps_only_and_logs(tmp_path):
    torch.manual_seed(0)
    model = HookProbe()
    monitor = GradientFlowMonitor(every_n_steps=2, save_plots=False)
    logger = RecordingLogger()
    trainer = quiet_trainer(tmp_path, max_steps=5, callbacks=[monitor], logger=logger, log_every_n_steps=3)
    trainer.fit(model, adding_loader(seq_len=10))

    assert [step for step, _ in monitor.history] == [0, 2, 4]
    assert monitor.num_measurements == 3
    assert model.hook_counts == [2, 0, 2, 0, 2]  # hooks only on measuring steps
    assert not model.rnn._forward_pre_hooks and not model.rnn._forward_hooks
    profile = monitor.history[-1][1]["rnn"]
    assert profile.shape == (10,) and profile.device.type == "cpu" and torch.all(profile > 0)
    assert set(monitor.latest_profiles["rnn"]) == {"input", "output"}
    stats = monitor.latest_statistics["rnn"]
    assert isinstance(stats, FlowStatistics) and 1 <= stats.memory_length <= 10
    kinds = monitor.latest_profiles["rnn"]
    assert stats == flow_statistics(kinds["input"], output_profile=kinds["output"])
    # logged exactly once per measurement, at the measured step, whatever log_every_n_steps is
    assert [step for step, _ in logger.records] == [0, 2, 4]
    last = logger.records[-1][1]
    assert set(last) == {
        f"grad_flow/rnn/{key}" for key in ("memory_length", "decay_rate", "verdict", "max_norm")
    }
    assert last["grad_flow/rnn/memory_length"] == stats.memory_length
    assert last["grad_flow/rnn/verdict"] == stats.verdict_code


def test_verdict_is_a_word_in_csv_and_tensorboard_text(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    monitor = GradientFlowMonitor(every_n_steps=2, save_plots=False)
    csv_logger, board = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[monitor], logger=[csv_logger, board])
    trainer.fit(TinyRNNRegressor(), adding_loader(seq_len=10))
    verdict = monitor.latest_statistics["rnn"].verdict

    with open(f"{csv_logger.log_dir}/metrics.csv") as file:
        cells = [row["grad_flow/rnn/verdict"] for row in csv.DictReader(file) if row["grad_flow/rnn/verdict"]]
    assert len(cells) == 2 and cells[-1] == verdict

    events = EventAccumulator(board.log_dir, size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    texts = events.Tensors("grad_flow/rnn/verdict/text_summary")
    assert [t.step for t in texts] == [0, 2]
    assert texts[-1].tensor_proto.string_val[0].decode() == verdict
    # the numeric code stays a scalar, for charts
    assert [s.value for s in events.Scalars("grad_flow/rnn/verdict")][-1] == monitor.latest_statistics[
        "rnn"
    ].verdict_code


def _fit_weights(tmp_path, callbacks, **trainer_kwargs):
    torch.manual_seed(0)
    model = TinyRNNRegressor()
    quiet_trainer(tmp_path, max_steps=6, callbacks=callbacks, **trainer_kwargs).fit(model, adding_loader())
    return model, [p.detach().clone() for p in model.parameters()]


def test_no_effect_on_training(tmp_path):
    _, plain = _fit_weights(tmp_path, [])
    _, monitored = _fit_weights(tmp_path, [GradientFlowMonitor(every_n_steps=1, save_plots=False)])
    assert all(torch.equal(a, b) for a, b in zip(plain, monitored, strict=True))


def test_gradient_accumulation_sums_squares_over_micro_batches(tmp_path):
    torch.manual_seed(0)
    model = TinyRNNRegressor()
    initial = copy.deepcopy(model)
    loader = adding_loader(seq_len=9)
    monitor = GradientFlowMonitor(every_n_steps=100, save_plots=False)
    quiet_trainer(tmp_path, max_steps=2, accumulate_grad_batches=2, callbacks=[monitor]).fit(model, loader)

    # step 0 is measured on micro-batches 0 and 1, both seen by the initial weights; Lightning divides the
    # loss by accumulate_grad_batches, so each micro-batch's gradient is halved
    parts = []
    for x, y in list(loader)[:2]:
        parts.append(
            gradient_flow(
                initial.rnn, x, lambda out, y=y: nn.functional.mse_loss(initial.head(out[0][:, -1]), y)
            )
        )
    expected = torch.stack(parts).div(2).square().sum(0).sqrt()
    assert [step for step, _ in monitor.history] == [0]
    torch.testing.assert_close(monitor.history[0][1]["rnn"], expected)


def test_explicit_modules_and_validation(tmp_path):
    model = TinyRNNRegressor()
    with pytest.raises(ValueError, match="modules"):
        quiet_trainer(tmp_path, callbacks=[GradientFlowMonitor(modules=["nope"], save_plots=False)]).fit(
            model, adding_loader()
        )
    with pytest.raises(TypeError, match="modules"):
        quiet_trainer(tmp_path, callbacks=[GradientFlowMonitor(modules=["head"], save_plots=False)]).fit(
            model, adding_loader()
        )
    for kwargs, match in (
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"max_history": 0}, "max_history"),
        ({"threshold": 2.0}, "threshold"),
        ({"explode_factor": 0.5}, "explode_factor"),
        ({"vanish_fraction": 0.0}, "vanish_fraction"),
        ({"modules": "rnn"}, "modules"),
        ({"plot_every_n_measurements": 0}, "plot_every_n_measurements"),
    ):
        with pytest.raises(ValueError, match=match):
            GradientFlowMonitor(**kwargs)


class TwoRNNs(L.LightningModule):
    """An LSTM and a GRU cell unrolled by hand, to check discovery and cell time steps."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 4, batch_first=True)
        self.cell = nn.GRUCell(4, 4)
        self.head = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out, _ = self.lstm(x)
        h = torch.zeros(x.shape[0], 4)
        for step in out.unbind(1):
            h = self.cell(step, h)
        return nn.functional.mse_loss(self.head(h), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_discovers_layers_and_cells_and_bounds_history(tmp_path):
    monitor = GradientFlowMonitor(every_n_steps=1, max_history=2, save_plots=False)
    quiet_trainer(tmp_path, max_steps=3, callbacks=[monitor]).fit(TwoRNNs(), adding_loader(seq_len=7))
    assert [step for step, _ in monitor.history] == [1, 2]
    assert set(monitor.history[-1][1]) == {"lstm", "cell"}
    assert monitor.history[-1][1]["cell"].shape == (7,)
    assert monitor.latest_profiles["cell"]["output"].shape == (7,)

    only = GradientFlowMonitor(every_n_steps=1, modules=["cell"], save_plots=False)
    quiet_trainer(tmp_path, max_steps=1, callbacks=[only]).fit(TwoRNNs(), adding_loader(seq_len=7))
    assert set(only.history[0][1]) == {"cell"}


def test_warns_without_recurrent_modules(tmp_path):
    class NoRNN(TinyRNNRegressor):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.Identity()  # type: ignore[assignment]
            self.head = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x[:, -1])

    monitor = GradientFlowMonitor(save_plots=False)
    with pytest.warns(UserWarning, match="no recurrent module"):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[monitor]).fit(NoRNN(), adding_loader())
    assert monitor.history == []


def test_state_dict_round_trip(tmp_path):
    monitor = GradientFlowMonitor(every_n_steps=2, save_plots=False)
    quiet_trainer(tmp_path, max_steps=3, callbacks=[monitor]).fit(TinyRNNRegressor(), adding_loader())
    state = monitor.state_dict()
    assert isinstance(state["history"][0][1]["rnn"], list)  # plain Python values
    restored = GradientFlowMonitor(every_n_steps=2, max_history=1, save_plots=False)
    restored.load_state_dict(copy.deepcopy(state))
    assert restored.num_measurements == 2
    assert [step for step, _ in restored.history] == [2]
    torch.testing.assert_close(restored.history[0][1]["rnn"], monitor.history[-1][1]["rnn"])
    assert restored.latest_statistics == monitor.latest_statistics
    assert monitor.state_key == "GradientFlowMonitor{'every_n_steps': 2, 'modules': None}"


def test_bf16_mixed_precision(tmp_path):
    monitor = GradientFlowMonitor(every_n_steps=1, save_plots=False)
    # a GRU: oneDNN on CPU has no bf16 LSTM primitive for some shapes
    model = TinyRNNRegressor(rnn=nn.GRU(2, 8, batch_first=True))
    quiet_trainer(tmp_path, max_steps=2, precision="bf16-mixed", callbacks=[monitor]).fit(
        model, adding_loader()
    )
    profile = monitor.history[-1][1]["rnn"]
    assert profile.dtype == torch.float32 and torch.isfinite(profile).all() and torch.all(profile > 0)
