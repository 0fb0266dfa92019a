"""Evidence for issue 4: Trainer step time with gradient monitoring and clipping callbacks.

A 2-layer LSTM (hidden 128) with a linear head on the adding problem (T=50, batch 32), Adam, CPU, one thread.
Configurations, all measured in the same process with interleaved repeats (every repeat runs each
configuration once, in rotating order, so slow drifts of the machine hit all of them alike):

- ``none``: no callbacks, no clipping (the baseline of every ratio).
- ``lightning grad_norm``: Lightning's documented recipe, ``self.log_dict(grad_norm(self, norm_type=2))`` in
  ``on_before_optimizer_step`` every step, plus ``Trainer(gradient_clip_val=1.0)``.
- ``monitor``: :class:`~rnn_stability.callbacks.GradientNormMonitor` at its default interval (the Trainer's,
  50 steps), alone and with ``Trainer(gradient_clip_val=1.0)``.
- ``monitor + clip:<strategy>``: the monitor and :class:`~rnn_stability.callbacks.AdaptiveGradientClipping`
  with each strategy.

Step time is the wall time between consecutive ``on_train_batch_start`` calls (forward, backward, callbacks,
optimizer, logging), averaged over ``--steps`` steps after ``--warmup`` steps; ``--steps`` is a multiple of
the logging interval so logging steps are counted in their true proportion. The table gives the median over
repeats and the ratio to ``none``. Results go to ``benchmarks/results/callback_overhead.md``.

Run::

    nice python benchmarks/callback_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import grad_norm
from torch.utils.data import DataLoader
from trainer_timing import LSTMRegressor, StepTimer, parse_step_benchmark, step_time_parser

from rnn_stability.callbacks import AdaptiveGradientClipping, GradientNormMonitor

STRATEGIES = ("norm", "value", "percentile", "zscore", "agc")


class LightningGradNorm(LSTMRegressor):
    """Lightning's documented way to track gradient norms (``lightning.pytorch.utilities.grad_norm``)."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log_dict(grad_norm(self, norm_type=2))


Config = tuple[type[LSTMRegressor], Callable[[], list[Callback]], dict[str, Any]]


def configurations() -> dict[str, Config]:
    clip = {"gradient_clip_val": 1.0}
    configs: dict[str, Config] = {
        "none": (LSTMRegressor, list, {}),
        "lightning grad_norm every step + gradient_clip_val": (LightningGradNorm, list, clip),
        "monitor (default interval)": (LSTMRegressor, lambda: [GradientNormMonitor()], {}),
        "monitor + gradient_clip_val": (LSTMRegressor, lambda: [GradientNormMonitor()], clip),
    }
    for strategy in STRATEGIES:

        def callbacks(strategy: str = strategy) -> list[Callback]:
            return [AdaptiveGradientClipping(strategy=strategy), GradientNormMonitor()]

        configs[f"monitor + clip:{strategy}"] = (LSTMRegressor, callbacks, {})
    return configs


def time_run(config: Config, loader: DataLoader, args: argparse.Namespace, root: str) -> tuple[float, float]:
    """Mean (CPU, wall) seconds per step of one ``Trainer.fit``."""
    model_cls, make_callbacks, trainer_kwargs = config
    torch.manual_seed(0)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=CSVLogger(root, name="bench"),
        callbacks=[timer, *make_callbacks()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **trainer_kwargs,
    )
    trainer.fit(model_cls(args.hidden), loader)
    (_, wall0, cpu0), (_, wall1, cpu1) = timer.starts[args.warmup], timer.starts[-1]
    steps = len(timer.starts) - 1 - args.warmup
    return (cpu1 - cpu0) / steps, (wall1 - wall0) / steps


def main() -> None:
    parser = step_time_parser(__doc__.split("\n")[0], repeats=5, steps=50, output="callback_overhead.md")
    args, loader = parse_step_benchmark(parser)
    configs = configurations()
    names = list(configs)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                times[name].append(time_run(configs[name], loader, args, root))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    cpu = {name: [t[0] for t in runs] for name, runs in times.items()}
    wall = {name: [t[1] for t in runs] for name, runs in times.items()}
    cpu_base, wall_base = statistics.median(cpu["none"]), statistics.median(wall["none"])
    lines = [
        f"Trainer step time, 2-layer LSTM h={args.hidden}, T={args.seq_len}, batch {args.batch_size}, CPU, 1 thread,"
        f" torch {torch.__version__}, lightning {L.__version__}; median of {args.repeats} interleaved repeats of"
        f" {args.steps} steps (Trainer log_every_n_steps=50). CPU = process CPU time per step (robust to other"
        " processes on a shared machine); wall = elapsed time per step.",
        "",
        "| configuration | CPU ms / step | CPU ratio vs none | wall ms / step | wall ratio vs none |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        cpu_median, wall_median = statistics.median(cpu[name]), statistics.median(wall[name])
        lines.append(
            f"| {name} | {1e3 * cpu_median:.2f} | {cpu_median / cpu_base:.3f}"
            f" | {1e3 * wall_median:.2f} | {wall_median / wall_base:.3f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
