"""Evidence for issue 13: Trainer step time with `LossSpikeRecovery` (target ≤ 2 % at a snapshot every 100 steps).

A 2-layer LSTM (hidden 128) with a linear head on the adding problem (T=50, batch 32), Adam, CPU, one thread
(the model of ``benchmarks/callback_overhead.py``). Configurations, measured in the same process with
interleaved repeats (each repeat runs every configuration once, in rotating order):

- ``none``: no callbacks (the baseline).
- ``skip``: ``LossSpikeRecovery(action="skip")``.
- ``rollback``: ``LossSpikeRecovery(action="rollback", snapshot_every_n_steps=100)``.

No spike happens in these runs: this is what the callback costs a healthy run. Step time is the time between
consecutive ``on_train_batch_start`` calls over ``--steps`` steps after ``--warmup`` steps; ``--steps`` is a
multiple of 100, so the snapshots fall in the timed window in their true proportion. The overhead of a
configuration is the median over repeats of its per-repeat ratio to ``none`` (paired, so that the slow drifts
of a shared machine cancel), next to the ratio of medians. Because a 2 % difference is within the noise of a
single run on a busy machine, the table also gives the CPU time spent inside the callback's own hooks
(``time.thread_time`` around each hook, in one more run per configuration after the timed ones, so that the
timers do not weigh on the ratios) and the cost of one snapshot. Results go to
``benchmarks/results/loss_spike_overhead.md``.

Run::

    nice .venv/bin/python benchmarks/loss_spike_overhead.py --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from trainer_timing import LSTMRegressor, StepTimer, parse_step_benchmark, step_time_parser

from rnn_stability.callbacks import LossSpikeRecovery
from rnn_stability.callbacks.training_snapshot import TrainingSnapshot

SNAPSHOT_EVERY = 100
HOOKS = ("on_before_backward", "on_before_optimizer_step", "on_train_batch_end", "_scale_lr", "_unscale_lr")


class TimedRecovery(LossSpikeRecovery):
    """`LossSpikeRecovery` adding up this thread's CPU time inside its per-step hooks (`hook_seconds`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_seconds = 0.0
        for name in HOOKS:
            setattr(self, name, self._timed(getattr(self, name)))

    def _timed(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return hook(*args, **kwargs)
            finally:
                self.hook_seconds += time.thread_time() - start

        return timed


CONFIGS: dict[str, dict[str, Any] | None] = {  # LossSpikeRecovery arguments; None: no callback
    "none": None,
    "skip": {"action": "skip"},
    f"rollback, snapshot every {SNAPSHOT_EVERY}": {
        "action": "rollback",
        "snapshot_every_n_steps": SNAPSHOT_EVERY,
    },
}


def make_callbacks(recovery: dict[str, Any] | None, timed: bool) -> list[Callback]:
    if recovery is None:
        return []
    return [TimedRecovery(**recovery) if timed else LossSpikeRecovery(**recovery)]


class _Run:
    """One timed ``Trainer.fit``: CPU and wall seconds per step, and the callback's own seconds per step."""

    def __init__(self, callbacks: list[Callback], loader: DataLoader, args: argparse.Namespace):
        torch.manual_seed(0)
        timer = StepTimer()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=args.warmup + args.steps,
            logger=False,
            callbacks=[timer, *callbacks],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(LSTMRegressor(args.hidden), loader)
        (_, wall0, cpu0), (_, wall1, cpu1) = timer.starts[args.warmup], timer.starts[-1]
        steps = len(timer.starts) - 1 - args.warmup
        self.cpu, self.wall = (cpu1 - cpu0) / steps, (wall1 - wall0) / steps
        # the hooks' time over the whole run per step (warm-up and the timers' own cost included)
        hook_seconds = sum(getattr(cb, "hook_seconds", 0.0) for cb in callbacks)
        self.hooks = hook_seconds / (len(timer.starts) - 1)


def snapshot_cost(args: argparse.Namespace, loader: DataLoader, captures: int = 50) -> tuple[float, int]:
    """Median seconds of `TrainingSnapshot.capture` after a few real steps, and the snapshot's bytes."""
    taken: dict[str, Any] = {}

    class Capture(Callback):
        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seconds = []
            for _ in range(captures):
                start = time.perf_counter()
                taken["snapshot"] = TrainingSnapshot.capture(trainer, pl_module)
                seconds.append(time.perf_counter() - start)
            taken["seconds"] = statistics.median(seconds)

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        callbacks=[Capture()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(LSTMRegressor(args.hidden), loader)
    return taken["seconds"], taken["snapshot"].nbytes


def main() -> None:
    parser = step_time_parser(__doc__.split("\n")[0], repeats=15, steps=100, output="loss_spike_overhead.md")
    args, loader = parse_step_benchmark(parser)
    if args.steps % SNAPSHOT_EVERY:
        parser.error(f"--steps must be a multiple of {SNAPSHOT_EVERY}, got {args.steps}")
    names = list(CONFIGS)
    runs: dict[str, list[_Run]] = {name: [] for name in names}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            runs[name].append(_Run(make_callbacks(CONFIGS[name], timed=False), loader, args))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    hooks = {name: _Run(make_callbacks(CONFIGS[name], timed=True), loader, args).hooks for name in names}
    minutes = (time.perf_counter() - started) / 60
    snapshot_seconds, snapshot_bytes = snapshot_cost(args, loader)

    base = runs["none"]
    base_cpu = statistics.median(r.cpu for r in base)
    lines = [
        f"Trainer step time, 2-layer LSTM h={args.hidden}, T={args.seq_len}, batch {args.batch_size}, Adam, CPU,"
        f" 1 thread, torch {torch.__version__}, lightning {L.__version__}; {args.repeats} interleaved repeats of"
        f" {args.steps} timed steps after {args.warmup} warm-up steps ({minutes:.0f} min on a shared 2-core"
        " machine, other jobs running). Paired ratio = median over repeats of (configuration / `none` of the"
        " same repeat); CPU = process CPU time per step; hooks = CPU time inside the callback's own hooks per"
        " step (a separate run), as a share of the `none` CPU step.",
        "",
        "| configuration | CPU ms / step | paired CPU ratio | ratio of CPU medians | wall ms / step"
        " | paired wall ratio | hooks ms / step | hooks / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        cpu, wall = (
            statistics.median(r.cpu for r in runs[name]),
            statistics.median(r.wall for r in runs[name]),
        )
        paired_cpu = statistics.median(r.cpu / b.cpu for r, b in zip(runs[name], base, strict=True))
        paired_wall = statistics.median(r.wall / b.wall for r, b in zip(runs[name], base, strict=True))
        lines.append(
            f"| {name} | {1e3 * cpu:.2f} | {paired_cpu:.3f} | {cpu / base_cpu:.3f} | {1e3 * wall:.2f}"
            f" | {paired_wall:.3f} | {1e3 * hooks[name]:.3f} | {100 * hooks[name] / base_cpu:.2f} % |"
        )
    lines += [
        "",
        f"One snapshot (`TrainingSnapshot.capture`: model + Adam state copied to the CPU):"
        f" {1e3 * snapshot_seconds:.2f} ms, {snapshot_bytes / 2**20:.2f} MiB; every {SNAPSHOT_EVERY} steps that is"
        f" {1e3 * snapshot_seconds / SNAPSHOT_EVERY:.3f} ms per step"
        f" ({100 * snapshot_seconds / SNAPSHOT_EVERY / base_cpu:.2f} % of the `none` step).",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
