"""Command line of the stability suite: run (or resume) the grid, then regenerate the table, plots and docs copies.

From the repository root::

    python -m benchmarks.stability --quick                 # a few minutes: one seed, a tenth of the steps
    nohup python -m benchmarks.stability > stability.log 2>&1 &   # default size, about an hour on 2 cores
    python -m benchmarks.stability --report-only           # tables and plots from the results JSON

A second invocation resumes: runs already in the results JSON are kept and not repeated.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rich.console import Console

from benchmarks.stability.conditions import CONDITIONS
from benchmarks.stability.recipes import RECIPES, available_recipes
from benchmarks.stability.report import write_report
from benchmarks.stability.suite import Grid, load_results, run_grid
from benchmarks.stability.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "stability"
DOCS_IMG = ROOT / "docs" / "img"


def _names(text: str, known: list[str], what: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"`--{what}` takes a comma-separated list of {known}, got {text!r}.")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stability", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="one seed and a tenth of the steps (minutes)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="parallel runs, one torch thread each (default 2)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; --quick: 1)")
    parser.add_argument("--step-scale", type=float, default=None, help="multiplies every step budget")
    parser.add_argument("--tasks", type=lambda s: _names(s, list(TASKS), "tasks"), default=tuple(TASKS))
    parser.add_argument(
        "--cells", type=lambda s: _names(s, ["lstm", "gru"], "cells"), default=("lstm", "gru")
    )
    parser.add_argument(
        "--recipes",
        type=lambda s: _names(s, available_recipes(), "recipes"),
        default=tuple(available_recipes()),
    )
    parser.add_argument(
        "--conditions", type=lambda s: _names(s, list(CONDITIONS), "conditions"), default=tuple(CONDITIONS)
    )
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default: per size)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the tables and plots go")
    parser.add_argument("--fresh", action="store_true", help="discard the results JSON and start over")
    parser.add_argument("--report-only", action="store_true", help="only regenerate tables and plots")
    parser.add_argument("--no-docs", action="store_true", help="do not copy the plots into docs/img")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"`--jobs` must be >= 1, got {args.jobs}.")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"`--seeds` must be >= 1, got {args.seeds}.")
    if args.step_scale is not None and not args.step_scale > 0:
        parser.error(f"`--step-scale` must be > 0, got {args.step_scale}.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    size = "quick" if args.quick else "default"
    if args.step_scale is not None:
        size = f"{size}-x{args.step_scale:g}"
    grid = Grid(
        tasks=args.tasks,
        cells=args.cells,
        recipes=args.recipes,
        conditions=args.conditions,
        seeds=tuple(range(args.seeds or (1 if args.quick else 3))),
        step_scale=args.step_scale or (0.1 if args.quick else 1.0),
        size=size,
    )
    output = args.output_dir or (RESULTS if size == "default" else RESULTS / size)
    path = args.results or output / "results.json"
    console = Console(width=None if sys.stdout.isatty() else 150)  # the log of a background run: long lines
    if args.fresh and path.exists():
        path.unlink()
    if args.report_only:
        results = load_results(path, size)
    else:
        results = run_grid(grid, path, jobs=args.jobs, console=console)
    written = write_report(results, output, planned=len(grid.runs()))
    if not args.no_docs and size == "default":
        for png in [p for p in written if p.suffix == ".png"]:
            shutil.copyfile(png, DOCS_IMG / f"stability_{png.name}")
    console.print(
        "Written: "
        + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in written)
    )
    if "full_spike" not in grid.recipes:
        console.print(
            f"(recipe {RECIPES['full_spike'].title!r} left out: no LossSpikeRecovery in this checkout)"
        )
    return results


if __name__ == "__main__":
    main()
