"""Orchestration of the demo: train both set-ups, print the table, write plots and metrics."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from rnn_stability.demo.config import MEAN_BASELINE_MSE, SOLVED_MSE, DemoConfig
from rnn_stability.demo.plots import write_plots
from rnn_stability.demo.report import comparison_markdown, comparison_table
from rnn_stability.demo.runner import run_setups
from rnn_stability.demo.worker import RunResult

__all__ = ["run_demo"]


def run_demo(config: DemoConfig, console: Console | None = None, jobs: int | None = None) -> list[RunResult]:
    """Trains both set-ups, prints the comparison table and writes the plots and the table.

    Files written to `config.output_dir`: the figures of
    `rnn_stability.demo.plots.write_plots`, `summary.md` (the table, markdown) and `metrics.json`
    (every recorded number of both runs).

    Args:
        config: the demo settings.
        console: where to print (default: a new rich console on stdout).
        jobs: parallel runs, 1 or 2 (default: 2 when two cores are free).

    Returns:
        The vanilla and the stable `RunResult`.

    Raises:
        DemoError: if a run fails.
    """
    console = console or Console()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]Adding problem[/], T={config.seq_len}, {config.cell.upper()} hidden {config.hidden_size}, "
        f"batch {config.batch_size}, Adam lr {config.lr:g}, {config.steps} steps, seed {config.seed}. "
        f"Predicting the mean gives MSE {MEAN_BASELINE_MSE:.3f}; solved means MSE < {SOLVED_MSE:g}."
    )
    if config.cell == "lstm":
        # The stable LSTM's C++ loop builds on its first forward: build it now, so that the build (about 20 s,
        # once, with its own message) is not counted as training time.
        from rnn_stability.nn.native import native_ops

        native_ops()
    results = run_setups(config, console=console, jobs=jobs)
    console.print(comparison_table(results, title="vanilla vs stable"))
    (output_dir / "summary.md").write_text(comparison_markdown(results))
    (output_dir / "metrics.json").write_text(json.dumps([asdict(r) for r in results]))
    paths = write_plots(results, output_dir)
    console.print(f"Plots, table and metrics written to [bold]{output_dir.resolve()}[/]:")
    for path in [*paths, output_dir / "summary.md", output_dir / "metrics.json"]:
        console.print(f"  {path.name}")
    return results
