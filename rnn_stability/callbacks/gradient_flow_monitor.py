"""Temporal gradient-flow monitor: how far back in time each recurrent module still receives gradient."""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from rnn_stability.callbacks.flow_plots import (
    figure_to_array,
    plot_flow_heatmap,
    plot_flow_profile,
    require_matplotlib,
)
from rnn_stability.callbacks.lightning_packages import is_lightning_instance
from rnn_stability.callbacks.portable_state import portable_state
from rnn_stability.functional.flow_statistics import FlowStatistics, check_flow_rule, flow_statistics
from rnn_stability.functional.gradient_flow import GradientFlowRecorder, is_recurrent

__all__ = ["GradientFlowMonitor"]


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


class GradientFlowMonitor(Callback):
    r"""Measure ‖∂L/∂x_t‖ per time step for every recurrent module, every `every_n_steps` optimizer steps.

    On a measuring step (`trainer.global_step % every_n_steps == 0`) a
    `rnn_stability.functional.GradientFlowRecorder` hooks each monitored module for the forward and
    backward passes of that step's micro-batches and is removed at the end of each batch. With gradient
    accumulation the squared norms of all micro-batches of the step are summed, so the profile is the norm of
    the gradient the optimizer sees (including Lightning's division of the loss by
    `accumulate_grad_batches`). With 16-bit AMP the loss scale is divided out; norms are always float32.
    A step the fp16 `GradScaler` skipped (it found Inf/NaN gradients, as it does while the loss scale
    calibrates) is not recorded, logged nor kept in `history`: it is counted in
    `num_skipped_measurements` and the next optimizer step is measured instead.
    On the other steps the callback registers nothing and does no work beyond one integer comparison.

    From the input profile of each module (and its output profile, the gradient the loss injected at each
    step) it computes `rnn_stability.functional.flow_statistics` (decay rate, effective memory length,
    verdict; the verdict rule is documented there) and sends to every
    logger of the trainer, with `step` = the measured optimizer step:

    - `grad_flow/<module>/memory_length`
    - `grad_flow/<module>/decay_rate`
    - `grad_flow/<module>/verdict`: the code of `rnn_stability.functional.VERDICT_CODES` (-1 vanishing,
      0 healthy, 1 exploding) — the word itself in a `lightning.pytorch.loggers.CSVLogger`'s file, and also
      as text under the same tag in a `lightning.pytorch.loggers.TensorBoardLogger`
    - `grad_flow/<module>/max_norm`

    `<module>` is the name in `pl_module.named_modules()`. Like
    `lightning.pytorch.callbacks.LearningRateMonitor`, it calls `logger.log_metrics` directly rather
    than `pl_module.log`: values logged with `self.log` are flushed only on Lightning's logging steps and
    repeated on later ones, which would misdate a measurement taken every `every_n_steps`. Loggers write on
    rank 0; the profile is rank 0's (under DDP each rank sees its own micro-batch), and so are the plots.

    Pictures (with `save_plots`): `heatmap_<module>.png` (training step × time step, log10 norm, over the
    kept history) and `profile_<module>.png` (latest input and output profiles), written to
    `<trainer.log_dir>/gradient_flow/` every `plot_every_n_measurements` measurements and when training
    ends, and sent with `add_image` to a `lightning.pytorch.loggers.TensorBoardLogger` if one is used.

    Args:
        every_n_steps: measure on optimizer steps that are multiples of this (step 0 included).
        modules: names of the modules to watch (`torch.nn.RNNBase` or `torch.nn.RNNCellBase`); `None`
            watches every recurrent module that is not inside another recurrent module.
        threshold: fraction of the maximum norm that counts for the memory length, in (0, 1].
        save_plots: write the PNG pictures (needs matplotlib, the `plot` extra).
        max_history: number of measurements kept in `history` (oldest dropped first).
        explode_factor: growth over the sequence above which the verdict is "exploding", greater than 1.
        vanish_fraction: memory length, as a fraction of `T`, below which the verdict is "vanishing".
        plot_every_n_measurements: how often the pictures are rewritten during training.

    Attributes:
        history: `[(step, {module: input profile (T,) on CPU})]`, at most `max_history` entries.
        latest_statistics: `{module: FlowStatistics}` of the latest measurement.
        latest_profiles: `{module: {"input": (T,), "output": (T,)}}` of the latest measurement (the
            output profile is ‖∂L/∂y_t‖ for the module's output sequence, absent if the loss does not use it).
        num_measurements: measurements taken so far.
        num_skipped_measurements: measurements dropped because the fp16 `GradScaler` skipped their step.

    Raises:
        ValueError: if an argument is out of range.
        TypeError: if `save_plots` is not a bool.
        ImportError: if `save_plots` is set and matplotlib is not installed.

    Examples:
        >>> from lightning.pytorch import Trainer
        >>> monitor = GradientFlowMonitor(every_n_steps=100, threshold=0.01)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        modules: list[str] | None = None,
        threshold: float = 0.01,
        save_plots: bool = True,
        max_history: int = 200,
        explode_factor: float = 10.0,
        vanish_fraction: float = 0.5,
        plot_every_n_measurements: int = 10,
    ) -> None:
        _check_int("every_n_steps", every_n_steps, 1)
        _check_int("max_history", max_history, 1)
        _check_int("plot_every_n_measurements", plot_every_n_measurements, 1)
        check_flow_rule(threshold, explode_factor, vanish_fraction)
        if modules is not None and (
            isinstance(modules, str) or not all(isinstance(m, str) for m in modules) or not modules
        ):
            raise ValueError(f"`modules` must be None or a non-empty list of module names, got {modules!r}.")
        if not isinstance(save_plots, bool):  # bool("no") is True
            raise TypeError(f"`save_plots` must be a bool, got {save_plots!r}.")
        if save_plots:
            require_matplotlib()
        self.every_n_steps = every_n_steps
        self.modules = list(modules) if modules is not None else None
        self.threshold = float(threshold)
        self.save_plots = save_plots
        self.max_history = max_history
        self.explode_factor = float(explode_factor)
        self.vanish_fraction = float(vanish_fraction)
        self.plot_every_n_measurements = plot_every_n_measurements
        self.history: list[tuple[int, dict[str, Tensor]]] = []
        self.latest_statistics: dict[str, FlowStatistics] = {}
        self.latest_profiles: dict[str, dict[str, Tensor]] = {}
        self.num_measurements = 0
        self.num_skipped_measurements = 0
        self._remeasure = False
        self._scale_before_step: float | None = None
        self._recorder: GradientFlowRecorder | None = None
        self._pending_step: int | None = None
        self._plot_dir: str | None = None
        self._warned_empty = False

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies (darts' `save`, neuralforecast's `fit`) leave the run behind.
        return portable_state(self, {"_recorder": None, "_pending_step": None, "_scale_before_step": None})

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, modules=self.modules)

    def _find_modules(self, pl_module: pl.LightningModule) -> dict[str, nn.Module]:
        named = dict(pl_module.named_modules())
        if self.modules is None:
            found: dict[str, nn.Module] = {}
            for name, module in named.items():
                inside = any(name.startswith(f"{outer}.") for outer in found)
                if is_recurrent(module) and not inside:
                    found[name] = module
            return found
        chosen: dict[str, nn.Module] = {}
        for name in self.modules:
            if name not in named:
                available = [n for n, m in named.items() if is_recurrent(m)]
                raise ValueError(
                    f"`modules` names {name!r}, which is not a submodule; recurrent ones: {available}."
                )
            if not is_recurrent(named[name]):
                raise TypeError(
                    f"`modules` names {name!r}, a {type(named[name]).__name__}; it must be a torch.nn.RNNBase "
                    "or torch.nn.RNNCellBase."
                )
            chosen[name] = named[name]
        return chosen

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        found = self._find_modules(pl_module)
        if not found:
            rank_zero_warn(
                "GradientFlowMonitor found no recurrent module (torch.nn.RNNBase / RNNCellBase) to watch."
            )
            self._recorder = None
            return
        self._recorder = GradientFlowRecorder(found)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_plots:
            # trainer.log_dir broadcasts under DDP, so every rank must ask, not only rank 0
            self._plot_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "gradient_flow")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        recorder = self._recorder
        if recorder is None or (trainer.global_step % self.every_n_steps and not self._remeasure):
            return
        if self._pending_step != trainer.global_step:
            recorder.reset()
            self._pending_step = trainer.global_step
        recorder.scale = 1.0
        recorder.next_pass()
        recorder.attach()

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        recorder = self._recorder
        if recorder is None or not recorder.attached:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            # the hooks see gradients of the scaled loss; one host sync, on measuring steps only
            recorder.scale = float(scaler.get_scale())
            self._scale_before_step = recorder.scale

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        recorder = self._recorder
        if recorder is None or not recorder.attached:
            return
        recorder.detach()
        if self._pending_step is None or trainer.global_step == self._pending_step:
            return  # the accumulation window of this optimizer step is still open
        step, self._pending_step = self._pending_step, None
        scale_before, self._scale_before_step = self._scale_before_step, None
        if scale_before is not None and self._scaler_skipped(trainer, scale_before):
            # the GradScaler found Inf/NaN and skipped this optimizer step (loss-scale calibration): its
            # profile describes no update, so it is dropped and the next step is measured instead
            recorder.reset()
            self.num_skipped_measurements += 1
            self._remeasure = True
            return
        self._remeasure = False
        profiles = {
            name: {kind: p.detach().cpu() for kind, p in kinds.items()}
            for name, kinds in recorder.profiles().items()
        }
        recorder.reset()
        self._record(trainer, step, profiles)

    @staticmethod
    def _scaler_skipped(trainer: pl.Trainer, scale_before: float) -> bool:
        # `GradScaler.update` multiplies the scale by `backoff_factor` (< 1) exactly when it skipped the step
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return scaler is not None and scaler.is_enabled() and float(scaler.get_scale()) < scale_before

    def _record(self, trainer: pl.Trainer, step: int, profiles: dict[str, dict[str, Tensor]]) -> None:
        inputs = {name: kinds["input"] for name, kinds in profiles.items() if "input" in kinds}
        if not inputs:
            if not self._warned_empty:
                rank_zero_warn(
                    f"GradientFlowMonitor: no gradient reached the inputs of {list(self._recorder_names())} at step "
                    f"{step} (modules not called in training_step, or their inputs not floating point)."
                )
                self._warned_empty = True
            return
        self.latest_profiles = profiles
        self.latest_statistics = {
            name: flow_statistics(
                profile,
                self.threshold,
                explode_factor=self.explode_factor,
                vanish_fraction=self.vanish_fraction,
                # a loss at every step adds up going back; the output profile says how much was injected
                output_profile=profiles[name].get("output"),
            )
            for name, profile in inputs.items()
        }
        self.history.append((step, inputs))
        del self.history[: -self.max_history]
        self.num_measurements += 1
        metrics: dict[str, float] = {}
        for name, stats in self.latest_statistics.items():
            metrics[f"grad_flow/{name}/memory_length"] = float(stats.memory_length)
            metrics[f"grad_flow/{name}/decay_rate"] = stats.decay_rate
            metrics[f"grad_flow/{name}/verdict"] = float(stats.verdict_code)
            metrics[f"grad_flow/{name}/max_norm"] = stats.max_norm
        for logger in trainer.loggers:
            self._log_to(logger, metrics, step)
        if self.save_plots and self.num_measurements % self.plot_every_n_measurements == 0:
            self._plot(trainer)

    def _log_to(self, logger: Any, metrics: dict[str, float], step: int) -> None:
        # The verdict is a word; loggers that can keep one get it (a CSV cell, a TensorBoard text), the
        # others the numeric code of VERDICT_CODES.
        if is_lightning_instance(logger, "loggers.CSVLogger"):
            words = {
                f"grad_flow/{name}/verdict": stats.verdict for name, stats in self.latest_statistics.items()
            }
            logger.log_metrics({**metrics, **words}, step=step)
            return
        logger.log_metrics(metrics, step=step)
        if is_lightning_instance(logger, "loggers.TensorBoardLogger"):
            for name, stats in self.latest_statistics.items():
                logger.experiment.add_text(f"grad_flow/{name}/verdict", stats.verdict, global_step=step)

    def _recorder_names(self) -> list[str]:
        return list(self._recorder.modules) if self._recorder is not None else []

    def _plot(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not self.history or self._plot_dir is None:
            return
        step = self.history[-1][0]
        boards: list[Any] = [
            logger for logger in trainer.loggers if is_lightning_instance(logger, "loggers.TensorBoardLogger")
        ]
        for name in self.history[-1][1]:
            rows = [(s, p[name]) for s, p in self.history if name in p]
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "module"
            heatmap = plot_flow_heatmap(
                [s for s, _ in rows],
                [p for _, p in rows],
                title=f"gradient flow: {name}",
                path=os.path.join(self._plot_dir, f"heatmap_{safe}.png"),
            )
            latest = self.latest_profiles.get(name, {})
            stats = self.latest_statistics.get(name)
            summary = (
                "" if stats is None else f": memory {stats.memory_length}/{stats.seq_len}, {stats.verdict}"
            )
            profile = plot_flow_profile(
                rows[-1][1],
                output_profile=latest.get("output"),
                threshold=self.threshold,
                title=f"gradient flow: {name} (step {step}){summary}",
                path=os.path.join(self._plot_dir, f"profile_{safe}.png"),
            )
            for board in boards:
                for tag, figure in (("heatmap", heatmap), ("profile", profile)):
                    board.experiment.add_image(
                        f"grad_flow/{name}/{tag}",
                        figure_to_array(figure),
                        global_step=step,
                        dataformats="HWC",
                    )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_plots:
            self._plot(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._recorder is not None:
            self._recorder.detach()
            self._recorder.reset()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._recorder is not None:
            self._recorder.detach()
            self._recorder.reset()
        self._pending_step = None
        self._scale_before_step = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [
                [step, {name: p.tolist() for name, p in profiles.items()}] for step, profiles in self.history
            ],
            "latest_statistics": {name: asdict(stats) for name, stats in self.latest_statistics.items()},
            "num_measurements": self.num_measurements,
            "num_skipped_measurements": self.num_skipped_measurements,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [
            (
                int(step),
                {name: torch.tensor(values, dtype=torch.float32) for name, values in profiles.items()},
            )
            for step, profiles in state_dict.get("history", [])
        ][-self.max_history :]
        self.latest_statistics = {
            name: FlowStatistics(**fields) for name, fields in state_dict.get("latest_statistics", {}).items()
        }
        self.num_measurements = int(state_dict.get("num_measurements", 0))
        self.num_skipped_measurements = int(state_dict.get("num_skipped_measurements", 0))
