"""The suite's tasks, built from the library's and the examples' own data modules and models.

Each task fixes, before any run, its metric, its success threshold, its normal learning rate, its step budget
and its model size; every recipe gets exactly these. `build_task` returns a fresh model, its data and an
`evaluate()` that scores the model on held-out data.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import torch
from torch import nn

from benchmarks.stability.digits import DigitsDataModule, SequenceClassifier
from rnn_stability.demo.models import SequenceRegressor, build_rnn
from rnn_stability.demo.task import AddingProblemDataModule

__all__ = ["TASKS", "Task", "Built", "build_task", "describe", "is_better", "load_example"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """`examples/<name>/train.py` as a module (the examples are scripts, not a package)."""
    module_name = f"example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / name / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@dataclass(frozen=True)
class Task:
    """What one task trains and how it is scored (identical for every recipe).

    Args:
        name: key of the task.
        title: one line for the tables.
        metric: name of the validation metric.
        higher_is_better: direction of `metric`.
        threshold: success means the final validation metric is better than this; for the tasks whose
            threshold is a baseline computed from the data (`None` here), `Built.threshold` holds it.
        threshold_text: how the threshold is defined, for the table.
        lr: the normal Adam learning rate.
        steps: optimizer steps of the default size.
        batch_size: sequences per batch.
        hidden_size: recurrent width.
        timescale: the longest dependency (`max_timescale` of chrono initialisation).
    """

    name: str
    title: str
    metric: str
    higher_is_better: bool
    threshold: float | None
    threshold_text: str
    lr: float
    steps: int
    batch_size: int
    hidden_size: int
    timescale: int


@dataclass
class Built:
    """A fresh model, its data module, its scorer and the threshold in force."""

    model: L.LightningModule
    data: L.LightningDataModule
    evaluate: Callable[[], float]
    threshold: float


def _no_grad_eval(model: nn.Module, score: Callable[[], float]) -> Callable[[], float]:
    def evaluate() -> float:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            value = score()
        model.train(was_training)
        return value if math.isfinite(value) else math.nan

    return evaluate


def _adding(task: Task, cell: str, impl: str, ln: bool, lr: float, seed: int) -> Built:
    model = SequenceRegressor(
        cell=cell,
        input_size=2,
        hidden_size=task.hidden_size,
        implementation=impl,  # type: ignore[arg-type]
        layer_norm=ln,
        lr=lr,
    )
    data = AddingProblemDataModule(seq_len=200, batch_size=task.batch_size, num_val_samples=256, seed=seed)
    x, y = data.val_dataset().tensors
    score = _no_grad_eval(model, lambda: float(nn.functional.mse_loss(model(x), y)))
    return Built(model, data, score, task.threshold or 0.0)


def _copy(task: Task, cell: str, impl: str, ln: bool, lr: float, seed: int) -> Built:
    example = load_example("copy_task")
    model = example.CopyTaskModel(
        cell=cell, hidden_size=task.hidden_size, implementation=impl, layer_norm=ln, lr=lr
    )
    data = example.CopyTaskDataModule(delay=100, batch_size=task.batch_size, num_val_samples=256, seed=seed)
    tokens, targets = data.val_set.tensors

    def recall() -> float:
        hits = model(tokens)[:, -model.copy_len :].argmax(-1) == targets[:, -model.copy_len :]
        return float(hits.float().mean())

    return Built(model, data, _no_grad_eval(model, recall), task.threshold or 0.0)


def _digits(permuted: bool) -> Callable[..., Built]:
    def build(task: Task, cell: str, impl: str, ln: bool, lr: float, seed: int) -> Built:
        model = SequenceClassifier(
            cell=cell,
            hidden_size=task.hidden_size,
            implementation=impl,  # type: ignore[arg-type]
            layer_norm=ln,
            lr=lr,
        )
        data = DigitsDataModule(permuted=permuted, batch_size=task.batch_size, seed=seed)
        x, y = data.val_set.tensors
        score = _no_grad_eval(model, lambda: float((model(x).argmax(-1) == y).float().mean()))
        return Built(model, data, score, task.threshold or 0.0)

    return build


def _sunspots(task: Task, cell: str, impl: str, ln: bool, lr: float, seed: int) -> Built:
    example = load_example("sunspots_forecasting")
    model = example.SunspotForecaster(
        cell=cell, hidden_size=task.hidden_size, implementation=impl, layer_norm=ln, lr=lr
    )
    data = example.SunspotsDataModule(window=22, split_year=1950, season=11, batch_size=task.batch_size)
    windows, targets, naive = data.val_set.tensors
    seasonal_naive_mae = float((naive - targets).abs().mean())
    score = _no_grad_eval(model, lambda: float((model(windows) - targets).abs().mean()))
    return Built(model, data, score, seasonal_naive_mae)


def _char_lm(task: Task, cell: str, impl: str, ln: bool, lr: float, seed: int) -> Built:
    example = load_example("char_lm")
    data = example.CharDataModule(seq_len=64, batch_size=task.batch_size, val_fraction=0.1)
    model = example.CharLanguageModel(
        vocab_size=data.vocab_size, embedding_dim=32, hidden_size=task.hidden_size, num_layers=1,
        convert=False, lr=lr,
    )  # fmt: skip
    # The example's model is written with torch.nn.LSTM; every recipe swaps in the same recurrent layer its
    # cell and implementation call for (the attribute keeps the example's name, `lstm`, also for a GRU).
    model.model.lstm = build_rnn(cell, 32, task.hidden_size, implementation=impl, layer_norm=ln)
    ids, targets = data.val_set.tensors
    train_ids = data.train_set.tensors[1].flatten()
    counts = torch.bincount(train_ids, minlength=data.vocab_size).float() + 1.0
    unigram_ppl = math.exp(float(-(counts / counts.sum()).log()[targets.flatten()].mean()))

    def perplexity() -> float:
        logits = model(ids)
        return math.exp(float(nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())))

    return Built(model, data, _no_grad_eval(model, perplexity), 0.5 * unigram_ppl)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("adding", "adding problem, T = 200", "val MSE", False, 0.05,
             "< 0.05 (mean predictor: 0.167)", 3e-3, 400, 32, 64, 200),
        Task("copy", "copy task, delay 100 (T = 120)", "recall accuracy", True, 0.2,
             "> 0.2 (memoryless: 0.125)", 1e-3, 200, 32, 64, 120),
        Task("seq_digits", "sequential 8×8 digits, T = 64", "val accuracy", True, 0.5,
             "> 0.5 (chance: 0.1)", 3e-3, 300, 32, 64, 64),
        Task("perm_digits", "permuted 8×8 digits, T = 64", "val accuracy", True, 0.5,
             "> 0.5 (chance: 0.1)", 3e-3, 300, 32, 64, 64),
        Task("sunspots", "sunspots, window 22 years", "val MAE", False, None,
             "< seasonal-naive MAE (same years)", 1e-2, 200, 32, 32, 22),
        Task("char_lm", "character LM, shipped corpus, T = 64", "val perplexity", False, None,
             "< ½ × unigram perplexity", 3e-3, 200, 32, 64, 64),
    )
}  # fmt: skip

_BUILDERS: dict[str, Callable[..., Built]] = {
    "adding": _adding,
    "copy": _copy,
    "seq_digits": _digits(permuted=False),
    "perm_digits": _digits(permuted=True),
    "sunspots": _sunspots,
    "char_lm": _char_lm,
}


def build_task(name: str, cell: str, implementation: str, layer_norm: bool, lr: float, seed: int) -> Built:
    """A fresh model and data of task `name` (call after seeding: the weights come from torch's RNG)."""
    task = TASKS[name]
    return _BUILDERS[name](task, cell, implementation, layer_norm, lr, seed)


def is_better(task: Task, value: float, threshold: float) -> bool:
    """Whether `value` meets `threshold` in the task's direction (NaN never does)."""
    if not math.isfinite(value):
        return False
    return value > threshold if task.higher_is_better else value < threshold


def describe(task: Task) -> dict[str, Any]:
    """The task's settings as plain values (stored in the results, printed in the table)."""
    return {
        "title": task.title,
        "metric": task.metric,
        "threshold": task.threshold_text,
        "lr": task.lr,
        "steps": task.steps,
        "batch_size": task.batch_size,
        "hidden_size": task.hidden_size,
    }
