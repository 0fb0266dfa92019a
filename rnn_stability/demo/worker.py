"""Trains one set-up in the current process and returns plain-Python results (picklable)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lightning as L
import torch

from rnn_stability.demo.config import SOLVED_MSE, DemoConfig
from rnn_stability.demo.recording import LossRecorder, MemoryLogger
from rnn_stability.demo.setups import build_setup
from rnn_stability.demo.task import AddingProblemDataModule

if TYPE_CHECKING:
    from rnn_stability.callbacks import GradientFlowMonitor

__all__ = ["RunResult", "train_setup", "first_step_below"]


@dataclass
class RunResult:
    """What one training run produced, as plain Python values.

    Args:
        name: set-up name (`"vanilla"` or `"stable"`).
        title: one-line description of the recipe.
        steps: optimizer steps taken.
        seconds: wall time of `Trainer.fit`.
        losses: training MSE of every step.
        smoothed: exponential moving average (factor 0.95) of `losses`.
        final_mse: MSE on the held-out validation set after training.
        steps_to_solve: first step whose smoothed training MSE is below 0.01, `None` if never.
        clipped_steps: steps whose gradient the clipper scaled down (`None` without a clipper).
        skipped_steps: steps skipped for non-finite gradients (`None` without a clipper).
        memory_length: effective memory length (time steps) from the last gradient-flow measurement.
        flow_verdict: `"vanishing"`, `"exploding"` or `"healthy"` from the same measurement.
        flow_history: `(step, profile)` pairs, `profile[t]` = ‖∂L/∂x_t‖.
        metrics: every scalar the callbacks logged, as `{key: [(step, value), ...]}`.
        cpu_seconds: CPU time of this process during `Trainer.fit` (all its threads); on a busy machine
            it shows what the run costs independently of how long it waited for a core.
    """

    name: str
    title: str
    steps: int
    seconds: float
    losses: list[float]
    smoothed: list[float]
    final_mse: float
    steps_to_solve: int | None
    clipped_steps: int | None = None
    skipped_steps: int | None = None
    memory_length: float | None = None
    flow_verdict: str | None = None
    flow_history: list[tuple[int, list[float]]] = field(default_factory=list)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    cpu_seconds: float | None = None


def first_step_below(values: list[float], threshold: float) -> int | None:
    """The 1-based index of the first value below `threshold`, or `None`.

    Examples:
        >>> first_step_below([0.3, 0.2, 0.005, 0.001], 0.01)
        3
        >>> first_step_below([0.3], 0.01) is None
        True
    """
    for index, value in enumerate(values, start=1):
        if value < threshold:
            return index
    return None


def _flow_results(
    monitor: GradientFlowMonitor,
) -> tuple[float | None, str | None, list[tuple[int, list[float]]]]:
    """Memory length, verdict and profile history of the first recurrent module the flow monitor saw."""
    if not monitor.latest_statistics:
        return None, None, []
    module_name, stats = next(iter(monitor.latest_statistics.items()))
    flow = [
        (int(step), profiles[module_name].float().tolist())
        for step, profiles in monitor.history
        if module_name in profiles
    ]
    memory = float(stats.memory_length)
    return (memory if math.isfinite(memory) else None), str(stats.verdict), flow


def train_setup(
    name: str,
    config: DemoConfig,
    on_progress: Callable[[int, float], None] | None = None,
    num_threads: int = 1,
) -> RunResult:
    """Fits the set-up `name` for `config.steps` steps and measures it.

    Args:
        name: `"vanilla"` or `"stable"`.
        config: the demo settings.
        on_progress: called as `on_progress(step, smoothed_mse)` a few times per second.
        num_threads: torch intra-op threads for this run.

    Returns:
        The `RunResult`.
    """
    torch.set_num_threads(num_threads)
    L.seed_everything(config.seed, verbose=False)
    setup = build_setup(name, config)
    data = AddingProblemDataModule(seq_len=config.seq_len, batch_size=config.batch_size, seed=config.seed)
    recorder = LossRecorder(on_progress=on_progress)
    logger = MemoryLogger(save_dir=str(config.output_dir))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=config.steps,
        logger=logger,
        log_every_n_steps=5,
        limit_val_batches=0,
        callbacks=[*setup.callbacks, recorder],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(config.output_dir),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*`limit_val_batches=0`.*")
        # Third-party deprecation notices (torch's pytree via Lightning) would break up the progress display.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*", category=FutureWarning)
        trainer.fit(setup.model, datamodule=data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    model = setup.model.eval()
    x, y = data.val_dataset().tensors
    with torch.no_grad():
        final_mse = float(torch.nn.functional.mse_loss(model(x), y))

    clipper = setup.clipper
    memory, verdict, flow = _flow_results(setup.flow_monitor)
    return RunResult(
        name=name,
        title=setup.title,
        steps=trainer.global_step,
        seconds=seconds,
        losses=recorder.losses,
        smoothed=recorder.smoothed,
        final_mse=final_mse,
        steps_to_solve=first_step_below(recorder.smoothed, SOLVED_MSE),
        clipped_steps=None if clipper is None else int(clipper.num_clipped_steps),
        skipped_steps=None if clipper is None else int(clipper.num_skipped_steps),
        memory_length=memory,
        cpu_seconds=cpu_seconds,
        flow_verdict=verdict,
        flow_history=flow,
        metrics={key: list(values) for key, values in logger.history.items()},
    )
