"""The grid of runs, executed one process per core behind a rich progress view, resumable from its JSON file."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.stability.conditions import CONDITIONS
from benchmarks.stability.recipes import available_recipes
from benchmarks.stability.tasks import TASKS, describe
from benchmarks.stability.train import RunSpec, run_key, train_run

__all__ = ["Grid", "load_results", "pending_runs", "run_grid", "save_results"]


@dataclass(frozen=True)
class Grid:
    """The runs of one invocation.

    Args:
        tasks: task names.
        cells: `"lstm"` and / or `"gru"`.
        recipes: recipe names.
        conditions: condition names.
        seeds: seeds per cell.
        step_scale: multiplies every task's step budget (`--quick` uses a fraction).
        size: name of the size (`"default"`, `"quick"`, ...); a results file holds one size only.
    """

    tasks: tuple[str, ...] = tuple(TASKS)
    cells: tuple[str, ...] = ("lstm", "gru")
    recipes: tuple[str, ...] = tuple(available_recipes())
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    seeds: tuple[int, ...] = (0, 1, 2)
    step_scale: float = 1.0
    size: str = "default"

    def steps(self, task: str) -> int:
        """The step budget of `task` at this size (the same for every recipe)."""
        return max(10, round(TASKS[task].steps * self.step_scale))

    def runs(self) -> list[RunSpec]:
        """Every run, seed-major: a run stopped part-way has the same seeds done in every cell."""
        return [
            RunSpec(task, cell, recipe, condition, seed, self.steps(task))
            for seed in self.seeds
            for condition in self.conditions
            for task in self.tasks
            for cell in self.cells
            for recipe in self.recipes
        ]


def load_results(path: Path, size: str) -> dict[str, Any]:
    """The results file at `path`, or a fresh one; refuses a file of another size (it would mix budgets)."""
    if path.is_file():
        results = json.loads(path.read_text())
        if results.get("size") != size:
            raise SystemExit(
                f"{path} holds a {results.get('size')!r} run, not {size!r}: pass --fresh to start over."
            )
        return results
    return {"size": size, "settings": {}, "runs": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Writes `results` atomically (a run killed mid-write keeps the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def pending_runs(grid: Grid, results: dict[str, Any]) -> list[RunSpec]:
    """The runs of `grid` whose results are not in `results` yet."""
    done = results["runs"]
    return [s for s in grid.runs() if run_key(s.task, s.cell, s.recipe, s.condition, s.seed) not in done]


def _init_worker() -> None:
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "rnn_stability"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _worker(spec: RunSpec) -> dict[str, Any]:
    _init_worker()
    return train_run(spec)


def _summary_line(result: dict[str, Any]) -> str:
    status = "[green]success[/]" if result["success"] else "[yellow]no[/]"
    if result["nan"]:
        status = "[red]NaN[/]"
    elif result["diverged"]:
        status += " [red]diverged[/]"
    metric = result["final_metric"]
    value = "nan" if metric is None else f"{metric:.4g}"
    return (
        f"{result['task']:<11} {result['cell']:<4} {result['recipe']:<14} {result['condition']:<7} "
        f"seed {result['seed']}: {value:>8} (threshold {result['threshold']:.4g}) {status} "
        f"{1000 * result['seconds_per_step']:.0f} ms/step"
    )


def _record_settings(results: dict[str, Any], grid: Grid) -> None:
    import torch

    settings = results["settings"]
    settings["tasks"] = {name: {**describe(TASKS[name]), "steps": grid.steps(name)} for name in grid.tasks}
    settings["conditions"] = {name: asdict(CONDITIONS[name]) for name in grid.conditions}
    settings["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def run_grid(grid: Grid, path: Path, jobs: int = 2, console: Console | None = None) -> dict[str, Any]:
    """Runs every pending run of `grid` (`jobs` processes, one torch thread each), saving after each run.

    Returns:
        The results, with the runs done before this call.
    """
    console = console or Console()
    results = load_results(path, grid.size)
    _record_settings(results, grid)
    todo = pending_runs(grid, results)
    console.print(
        f"[bold]Stability suite[/] ({grid.size}): {len(grid.runs())} runs, {len(todo)} to do, "
        f"{jobs} process(es); results in {path}"
    )
    save_results(path, results)
    if not todo:
        return results
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, refresh_per_second=2) as progress:
        overall = progress.add_task("all runs", total=len(todo))
        per_task = {t: progress.add_task(TASKS[t].title[:28], total=_count(todo, t)) for t in grid.tasks}

        def finished(spec: RunSpec, result: dict[str, Any]) -> None:
            results["runs"][run_key(spec.task, spec.cell, spec.recipe, spec.condition, spec.seed)] = result
            results["updated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            save_results(path, results)
            progress.console.print(_summary_line(result))
            progress.advance(overall)
            progress.advance(per_task[spec.task])

        if jobs == 1:  # in this process: no start-up cost (the smoke test), and tracebacks stay readable
            for spec in todo:
                finished(spec, train_run(spec))
            return results
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker) as pool:
            futures: dict[Future[dict[str, Any]], RunSpec] = {pool.submit(_worker, s): s for s in todo}
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(futures[future], future.result())
    return results


def _count(specs: Iterable[RunSpec], task: str) -> int:
    return sum(1 for s in specs if s.task == task)
