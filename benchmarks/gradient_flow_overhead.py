"""Evidence for issue 6: Trainer step time with GradientFlowMonitor, on measuring and on other steps.

A 2-layer LSTM (hidden 128) with a linear head on the adding problem (T=50, batch 32), Adam, CPU, one thread.
Configurations, all in the same process with interleaved repeats (each repeat runs every configuration once,
in rotating order, so slow drifts of the machine hit all of them alike):

- ``none``: no callback (the baseline of every ratio).
- ``monitor, every step``: ``GradientFlowMonitor(every_n_steps=1)``: every step is a measuring step.
- ``monitor, every 10 steps``: ``GradientFlowMonitor(every_n_steps=10)``; its steps are split into
  measuring steps (step % 10 == 0) and the others.

``save_plots=False`` in these runs; the cost of drawing the pictures is timed separately (it is paid every
``plot_every_n_measurements`` measurements and at the end of training). Step time is the wall time between
consecutive ``on_train_batch_start`` calls (forward, backward, callbacks, optimizer), per step; the table gives
the median over all timed steps of all repeats and the ratio to the median of ``none``.

Whole-step timings on a shared CPU are noisy at the 1 % level (ratios of configurations that do the same work
scatter by several per cent between repeats; the range column shows it). So the measuring-step cost is also
timed in a plain loop that alternates plain and measuring steps (paired ratios), and the cost of the callback
on a non-measuring step is timed directly: its hooks called 100 000 times on a non-measuring step, divided by
the baseline step time. Results go to ``benchmarks/results/gradient_flow_overhead.md``.

Run::

    nice python benchmarks/gradient_flow_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader
from trainer_timing import LSTMRegressor, StepTimer, parse_step_benchmark, step_time_parser

from rnn_stability.callbacks import GradientFlowMonitor
from rnn_stability.functional import GradientFlowRecorder, flow_statistics

CONFIGS: dict[str, int | None] = {"none": None, "monitor, every step": 1, "monitor, every 10 steps": 10}


def time_run(
    every: int | None, loader: DataLoader, args: argparse.Namespace, root: str
) -> list[tuple[int, float]]:
    """Per-step (step, seconds) after the warm-up steps."""
    torch.manual_seed(0)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if every is not None:
        callbacks.append(GradientFlowMonitor(every_n_steps=every, save_plots=False))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    trainer.fit(LSTMRegressor(args.hidden), loader)
    starts = timer.starts[args.warmup :]
    return [(step, t1 - t0) for (step, t0, _), (_, t1, _) in zip(starts, starts[1:], strict=False)]


def hook_cost_per_idle_step(calls: int = 100_000) -> float:
    """Seconds per non-measuring step spent in the monitor's per-batch hooks."""
    monitor = GradientFlowMonitor(every_n_steps=10, save_plots=False)
    module = SimpleNamespace(rnn=nn.LSTM(2, 4))
    monitor.setup(SimpleNamespace(), SimpleNamespace(named_modules=lambda: [("rnn", module.rnn)]), "fit")  # type: ignore[arg-type]
    trainer: Any = SimpleNamespace(global_step=3, precision_plugin=None)
    start = time.perf_counter()
    for _ in range(calls):
        monitor.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
        monitor.on_before_backward(trainer, None, None)  # type: ignore[arg-type]
        monitor.on_train_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]
    return (time.perf_counter() - start) / calls


def paired_step_cost(
    args: argparse.Namespace, loader: DataLoader, pairs: int = 40
) -> tuple[float, float, float]:
    """Plain fwd+bwd+Adam steps alternating without / with measuring (recorder, finalize, statistics).

    Alternating within one loop pairs each measured step with the plain step just before it, so machine load
    cancels out. Returns (median plain seconds, median measured seconds, median of the paired ratios).
    """
    torch.manual_seed(0)
    model = LSTMRegressor(args.hidden)
    optimizer = model.configure_optimizers()
    recorder = GradientFlowRecorder({"rnn": model.rnn})
    x, y = next(iter(loader))

    def step(measure: bool) -> float:
        start = time.perf_counter()
        if measure:
            recorder.next_pass()
            recorder.attach()
        loss = model.training_step((x, y), 0)
        loss.backward()
        if measure:
            recorder.detach()
            profile = recorder.profiles()["rnn"]["input"].cpu()
            recorder.reset()
            flow_statistics(profile)
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    for _ in range(3):
        step(False), step(True)
    plain, measured = [], []
    for _ in range(pairs):
        plain.append(step(False))
        measured.append(step(True))
    ratios = [m / p for p, m in zip(plain, measured, strict=True)]
    return statistics.median(plain), statistics.median(measured), statistics.median(ratios)


def plot_cost(seq_len: int, history: int = 200) -> float:
    """Seconds to draw and write both pictures for one module with a full history."""
    monitor = GradientFlowMonitor(save_plots=True, max_history=history)
    profiles = [0.9 ** torch.arange(seq_len - 1.0, -1.0, -1.0) for _ in range(history)]
    monitor.history = [(10 * i, {"rnn": p}) for i, p in enumerate(profiles)]
    monitor.latest_profiles = {"rnn": {"input": profiles[-1]}}
    trainer: Any = SimpleNamespace(is_global_zero=True, loggers=[])
    with tempfile.TemporaryDirectory() as root:
        monitor._plot_dir = root
        monitor._plot(trainer)  # warm-up: matplotlib's imports and font cache
        start = time.perf_counter()
        monitor._plot(trainer)
        return time.perf_counter() - start


def main() -> None:
    parser = step_time_parser(__doc__.split("\n")[0], repeats=8, steps=40, output="gradient_flow_overhead.md")
    args, loader = parse_step_benchmark(parser)
    names = list(CONFIGS)
    runs: dict[str, list[list[tuple[int, float]]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                runs[name].append(time_run(CONFIGS[name], loader, args, root))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    rows: list[tuple[str, str, Callable[[int], bool]]] = [
        ("none", "none", lambda step: True),
        ("monitor, every step (all measuring)", "monitor, every step", lambda step: True),
        ("monitor, every 10 steps: measuring steps", "monitor, every 10 steps", lambda step: step % 10 == 0),
        ("monitor, every 10 steps: other steps", "monitor, every 10 steps", lambda step: step % 10 != 0),
        ("monitor, every 10 steps: all steps", "monitor, every 10 steps", lambda step: True),
    ]
    base_runs = [statistics.median(t for _, t in run) for run in runs["none"]]
    base = statistics.median(t for run in runs["none"] for _, t in run)
    idle = hook_cost_per_idle_step()
    drawing = plot_cost(args.seq_len)
    lines = [
        f"Trainer step time, 2-layer LSTM h={args.hidden}, T={args.seq_len}, batch {args.batch_size}, CPU, 1 thread,"
        f" torch {torch.__version__}, lightning {L.__version__}; {args.repeats} interleaved repeats of {args.steps}"
        " steps. ms / step: median over all timed steps; ratio: median over repeats of (median of the"
        " configuration / median of `none` in the same repeat), with its range.",
        "",
        "| configuration | steps timed | ms / step (median) | ratio vs none (paired) | ratio range |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, config, keep in rows:
        per_run = [[t for step, t in run if keep(step)] for run in runs[config]]
        pooled = [t for run in per_run for t in run]
        ratios = [statistics.median(run) / b for run, b in zip(per_run, base_runs, strict=True)]
        lines.append(
            f"| {label} | {len(pooled)} | {1e3 * statistics.median(pooled):.2f} | {statistics.median(ratios):.3f}"
            f" | {min(ratios):.3f}–{max(ratios):.3f} |"
        )
    plain, measured, paired = paired_step_cost(args, loader)
    lines += [
        "",
        "Same model, plain loop (no Trainer), 40 pairs of steps alternating without / with measuring (recorder"
        " hooks, input gradient, per-step float64 norms, copy to host, flow_statistics):",
        "",
        "| step | ms (median) | ratio (median of pairs) |",
        "|---|---:|---:|",
        f"| plain | {1e3 * plain:.2f} | 1.000 |",
        f"| measuring | {1e3 * measured:.2f} | {paired:.3f} |",
        "",
        f"Direct cost of the callback's hooks on a non-measuring step: {1e6 * idle:.2f} µs"
        f" = {100 * idle / base:.4f} % of the baseline step.",
        f"Drawing and writing both PNGs (history of 200 profiles, T={args.seq_len}): {1e3 * drawing:.0f} ms,"
        " paid every `plot_every_n_measurements` measurements (default 10) and at the end of training.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
