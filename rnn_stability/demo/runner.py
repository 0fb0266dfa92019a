"""Runs the two set-ups side by side (one process per core) behind a live rich progress display."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_module
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rnn_stability.demo.config import SOLVED_MSE, DemoConfig
from rnn_stability.demo.setups import SETUP_NAMES
from rnn_stability.demo.worker import RunResult, train_setup

__all__ = ["DemoError", "available_cores", "run_setups"]


class DemoError(RuntimeError):
    """A training run of the demo failed; the message holds the worker's traceback."""


def available_cores() -> int:
    """CPU cores this process may run on.

    Examples:
        >>> available_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hides Lightning's info messages ("`Trainer.fit` stopped", device summaries) under the progress bars."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _worker(name: str, config: DemoConfig, messages: Any, num_threads: int) -> None:
    """Entry point of a child process: trains one set-up and sends progress and the result to the parent."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    try:
        result = train_setup(
            name,
            config,
            on_progress=lambda step, mse: messages.put(("progress", name, step, mse)),
            num_threads=num_threads,
        )
        messages.put(("done", name, asdict(result)))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent, not vanish with the child
        messages.put(("error", name, traceback.format_exc()))


class _Display:
    """One progress bar per set-up, with the smoothed training MSE and the step at which the task was solved.

    The table printed at the end reports the MSE on held-out sequences instead; the labels say which is which.
    """

    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("train MSE (avg) {task.fields[mse]:>7}"),
            TextColumn("{task.fields[status]:<20}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            refresh_per_second=5,
        )
        self.tasks: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=config.steps, mse="-", status="starting")
            for name in SETUP_NAMES
        }
        self.solved_at: dict[str, int] = {}

    def update(self, name: str, step: int, mse: float) -> None:
        if name not in self.solved_at and mse < SOLVED_MSE:
            self.solved_at[name] = step
        status = f"[green]solved @ {self.solved_at[name]}" if name in self.solved_at else "training"
        self.progress.update(self.tasks[name], completed=step, mse=f"{mse:.4f}", status=status)

    def finish(self, result: RunResult) -> None:
        # The live status comes from throttled reports; the result knows the exact step.
        solved = result.steps_to_solve
        status = "[yellow]not solved" if solved is None else f"[green]solved @ {solved}"
        self.progress.update(self.tasks[result.name], completed=result.steps, status=status)


def _run_in_processes(config: DemoConfig, display: _Display, num_threads: int) -> dict[str, RunResult]:
    context = mp.get_context("spawn")
    messages = context.Queue()
    processes = {
        name: context.Process(target=_worker, args=(name, config, messages, num_threads), daemon=True)
        for name in SETUP_NAMES
    }
    for process in processes.values():
        process.start()
    results: dict[str, RunResult] = {}
    dead_checks: dict[str, int] = {}
    try:
        while len(results) < len(processes):
            try:
                kind, name, *payload = messages.get(timeout=0.5)
            except queue_module.Empty:
                for name, process in processes.items():
                    if name in results or process.is_alive():
                        continue
                    # Give the queue's feeder a moment to deliver a result sent just before exiting.
                    dead_checks[name] = dead_checks.get(name, 0) + 1
                    if dead_checks[name] > 6:
                        raise DemoError(
                            f"the {name!r} run stopped without a result (exit code {process.exitcode})."
                        ) from None
                continue
            if kind == "progress":
                display.update(name, *payload)
            elif kind == "done":
                results[name] = RunResult(**payload[0])
                display.finish(results[name])
            else:
                raise DemoError(f"the {name!r} run failed:\n{payload[0]}")
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
    return results


def _run_in_sequence(config: DemoConfig, display: _Display, num_threads: int) -> dict[str, RunResult]:
    results = {}
    for name in SETUP_NAMES:
        results[name] = train_setup(
            name, config, on_progress=partial(display.update, name), num_threads=num_threads
        )
        display.finish(results[name])
    return results


def run_setups(
    config: DemoConfig, console: Console | None = None, jobs: int | None = None
) -> list[RunResult]:
    """Trains the vanilla and the stable set-up and shows their progress live.

    With `jobs=2` (the default when at least two cores are free) each set-up trains in its own
    process, on its own core, and reports through a queue; with `jobs=1` they train one after the
    other in this process.

    Args:
        config: the demo settings.
        console: where the progress bars go (default: a new rich console on stdout).
        jobs: 1 or 2 parallel runs; `None` picks 2 if at least two cores are available.

    Returns:
        The results in the order of `rnn_stability.demo.setups.SETUP_NAMES`.

    Raises:
        ValueError: if `jobs` is not `None`, 1 or 2.
        DemoError: if a run fails; the message includes the worker's traceback.
    """
    cores = available_cores()
    if jobs is None:
        jobs = 2 if cores >= 2 else 1
    if jobs not in (1, 2):
        raise ValueError(f"`jobs` must be 1 or 2, got {jobs!r}.")
    num_threads = max(1, cores // jobs)
    display = _Display(config, console or Console())
    with display.progress, _quiet_lightning():
        if jobs == 2:
            results = _run_in_processes(config, display, num_threads)
        else:
            results = _run_in_sequence(config, display, num_threads)
    return [results[name] for name in SETUP_NAMES]
