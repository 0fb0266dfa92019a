"""One run of the suite: a task, a cell, a recipe, a condition and a seed, trained and scored in this process."""

from __future__ import annotations

import math
import statistics
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from benchmarks.stability.conditions import CONDITIONS, corrupt_kind, inject_corrupt_batches
from benchmarks.stability.recipes import RECIPES, recipe_callbacks
from benchmarks.stability.tasks import TASKS, build_task, is_better
from rnn_stability.demo.recording import LossRecorder

__all__ = ["RunSpec", "CURVE_POINTS", "downsample", "run_key", "train_run"]

#: Points kept of each training-loss curve (medians of equal bins of steps).
CURVE_POINTS = 100
#: Trainer settings shared by every run: CPU, no logger, checkpoints, progress bar or validation loop (the
#: `_Evaluator` scores the model itself).
_QUIET_CPU_TRAINER: dict[str, Any] = dict(
    accelerator="cpu", devices=1, logger=False, limit_val_batches=0, num_sanity_val_steps=0,
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
)  # fmt: skip
#: Validation evaluations per run (plus one before the first step).
EVALUATIONS = 5


@dataclass(frozen=True)
class RunSpec:
    """What one run trains."""

    task: str
    cell: str
    recipe: str
    condition: str
    seed: int
    steps: int


def run_key(task: str, cell: str, recipe: str, condition: str, seed: int) -> str:
    """The run's key in the results file.

    Examples:
        >>> run_key("adding", "lstm", "full", "stress", 0)
        'adding/lstm/full/stress/0'
    """
    return f"{task}/{cell}/{recipe}/{condition}/{seed}"


def downsample(values: list[float], points: int = CURVE_POINTS) -> list[float | None]:
    """Medians of `points` equal bins of `values`, ignoring non-finite values (`None` for a bin of them).

    Examples:
        >>> downsample([1.0, 3.0, float("nan"), float("nan")], points=2)
        [2.0, None]
    """
    if not values:
        return []
    size = max(1, math.ceil(len(values) / points))
    out: list[float | None] = []
    for start in range(0, len(values), size):
        finite = [v for v in values[start : start + size] if math.isfinite(v)]
        out.append(float(f"{statistics.median(finite):.4g}") if finite else None)
    return out


class _Evaluator(L.Callback):
    """Scores the model on held-out data before the first step and every `every` steps; times the scoring."""

    def __init__(self, evaluate: Any, every: int) -> None:
        self.evaluate, self.every = evaluate, every
        self.history: list[tuple[int, float]] = []
        self.seconds = 0.0

    def _score(self, step: int) -> None:
        start = time.perf_counter()
        self.history.append((step, self.evaluate()))
        self.seconds += time.perf_counter() - start

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._score(0)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self._score(trainer.global_step)


def _weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Trains `spec` for `spec.steps` steps and returns its measurements as plain values (picklable).

    Success means the validation metric after the last step meets the task's threshold; `steps_to_success`
    is then the first evaluation step where it did. `nan` marks a run with a non-finite loss on a step that
    was not corrupted on purpose, or non-finite weights at the end, or one stopped by an error (the error is
    kept); `diverged` marks a finite run whose training loss over its last 10 % of steps is above the loss of
    its first 10 steps.
    """
    task, recipe, condition = TASKS[spec.task], RECIPES[spec.recipe], CONDITIONS[spec.condition]
    torch.set_num_threads(1)
    L.seed_everything(spec.seed, verbose=False)
    lr = task.lr * condition.lr_factor
    built = build_task(spec.task, spec.cell, recipe.implementation, recipe.layer_norm, lr, spec.seed)
    if condition.corrupt:
        inject_corrupt_batches(built.model)
    recorder = LossRecorder(interval_s=math.inf)
    evaluator = _Evaluator(built.evaluate, max(1, spec.steps // EVALUATIONS))
    trainer = L.Trainer(
        **_QUIET_CPU_TRAINER,
        max_steps=spec.steps,
        callbacks=[*recipe_callbacks(recipe, task.timescale, spec.seed), recorder, evaluator],
        **recipe.trainer,
    )
    error = None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(built.model, datamodule=built.data)
        except RuntimeError:
            error = traceback.format_exc(limit=1).strip().splitlines()[-1][:300]
    seconds = time.perf_counter() - start - evaluator.seconds
    final = built.evaluate()
    if not evaluator.history or evaluator.history[-1][0] != trainer.global_step:
        evaluator.history.append((trainer.global_step, final))

    corrupted = {s for s in range(len(recorder.losses)) if condition.corrupt and corrupt_kind(s)}
    clean = [v for s, v in enumerate(recorder.losses) if s not in corrupted]
    nan = error is not None or not all(map(math.isfinite, clean)) or not _weights_finite(built.model)
    tail = clean[-max(1, len(clean) // 10) :]
    diverged = (not nan) and bool(clean) and statistics.fmean(tail) > statistics.fmean(clean[:10])
    success = error is None and is_better(task, final, built.threshold)
    hits = [s for s, v in evaluator.history if s > 0 and is_better(task, v, built.threshold)]
    curve = [math.nan if s in corrupted else v for s, v in enumerate(recorder.losses)]
    return {
        "task": spec.task,
        "cell": spec.cell,
        "recipe": spec.recipe,
        "condition": spec.condition,
        "seed": spec.seed,
        "steps": trainer.global_step,
        "threshold": built.threshold,
        "final_metric": final if math.isfinite(final) else None,
        "success": success,
        "steps_to_success": (hits[0] if hits else None) if success else None,
        "nan": nan,
        "diverged": diverged,
        "error": error,
        "seconds_per_step": seconds / max(1, trainer.global_step),
        "evaluations": [[s, v if math.isfinite(v) else None] for s, v in evaluator.history],
        "loss_curve": downsample(curve),
    }
