"""The comparison table of the demo, as a rich table for the terminal and as markdown for files."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from rnn_stability.demo.config import MEAN_BASELINE_MSE, SOLVED_MSE
from rnn_stability.demo.worker import RunResult

__all__ = ["comparison_rows", "comparison_table", "comparison_markdown"]


def _count(value: int | None, steps: int) -> str:
    return "off" if value is None else f"{value} / {steps}"


def _timing(result: RunResult) -> str:
    text = f"{result.seconds:.0f} s ({1000 * result.seconds / max(result.steps, 1):.0f} ms/step)"
    return text if result.cpu_seconds is None else f"{text}, {result.cpu_seconds:.0f} s CPU"


def comparison_rows(results: Sequence[RunResult]) -> list[tuple[str, list[str]]]:
    """The table's rows as `(metric, [value per run])` strings.

    Args:
        results: the runs to compare, one column each.

    Examples:
        >>> run = RunResult("vanilla", "torch", 10, 1.0, [0.2] * 10, [0.2] * 10, 0.18, None)
        >>> dict(comparison_rows([run]))["steps to solve (smoothed training MSE < 0.01)"]
        ['not solved in 10']
    """
    rows: list[tuple[str, list[str]]] = [
        ("recipe", [r.title for r in results]),
        (
            f"held-out MSE after training (mean baseline {MEAN_BASELINE_MSE:.3f})",
            [f"{r.final_mse:.4f} ({r.final_mse / MEAN_BASELINE_MSE:.1%} of baseline)" for r in results],
        ),
        (
            f"steps to solve (smoothed training MSE < {SOLVED_MSE:g})",
            [str(r.steps_to_solve) if r.steps_to_solve else f"not solved in {r.steps}" for r in results],
        ),
        ("clipped steps", [_count(r.clipped_steps, r.steps) for r in results]),
        ("skipped steps (non-finite)", [_count(r.skipped_steps, r.steps) for r in results]),
        (
            "memory length (time steps)",
            ["n/a" if r.memory_length is None else f"{r.memory_length:.0f}" for r in results],
        ),
        ("gradient flow verdict", [r.flow_verdict or "n/a" for r in results]),
        ("training time", [_timing(r) for r in results]),
    ]
    return rows


def comparison_table(results: Sequence[RunResult], title: str | None = None) -> Table:
    """A rich table with one column per run and one row per metric.

    Args:
        results: the runs to compare.
        title: optional table title.

    Examples:
        >>> run = RunResult("vanilla", "torch", 10, 1.0, [0.2] * 10, [0.2] * 10, 0.18, None)
        >>> table = comparison_table([run])
        >>> [column.header for column in table.columns], table.row_count
        (['', 'vanilla'], 8)
    """
    table = Table(title=title, show_lines=False)
    table.add_column("", style="bold")
    for result in results:
        table.add_column(result.name, overflow="fold")
    for metric, values in comparison_rows(results):
        table.add_row(metric, *values)
    return table


def comparison_markdown(results: Sequence[RunResult]) -> str:
    """The same table as GitHub-flavoured markdown.

    Args:
        results: the runs to compare.

    Examples:
        >>> run = RunResult("stable", "ours", 10, 1.0, [0.2] * 10, [0.2] * 10, 0.005, 7)
        >>> print(comparison_markdown([run]).splitlines()[0])
        | | stable |
    """
    lines = ["| | " + " | ".join(r.name for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for metric, values in comparison_rows(results):
        lines.append(f"| {metric} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
