"""Tables and plots of the stability suite, regenerated from its results JSON (nothing typed by hand)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.stability.conditions import CONDITIONS
from benchmarks.stability.recipes import RECIPES
from benchmarks.stability.tasks import TASKS

__all__ = [
    "cell_stats",
    "summary_markdown",
    "tasks_markdown",
    "thresholds_markdown",
    "write_plots",
    "write_report",
]

Runs = list[dict[str, Any]]


def _group(runs: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], Runs]:
    groups: dict[tuple[Any, ...], Runs] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in keys)].append(run)
    return groups


def _median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return statistics.median(finite) if finite else None


def cell_stats(runs: Runs) -> dict[str, Any]:
    """Success count, median steps to success, median final metric, NaN / diverged counts, ms per step.

    Examples:
        >>> run = {"success": True, "steps_to_success": 40, "final_metric": 0.01, "nan": False,
        ...        "diverged": False, "seconds_per_step": 0.02}
        >>> cell_stats([run, {**run, "success": False, "steps_to_success": None, "nan": True}])["successes"]
        1
    """
    return {
        "runs": len(runs),
        "successes": sum(r["success"] for r in runs),
        "steps_to_success": _median(r["steps_to_success"] for r in runs if r["success"]),
        "final_metric": _median(r["final_metric"] for r in runs),
        "nan": sum(r["nan"] for r in runs),
        "diverged": sum(r["diverged"] for r in runs),
        "ms_per_step": 1000 * (_median(r["seconds_per_step"] for r in runs) or 0.0),
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _ordered(names: Iterable[str], order: Iterable[str]) -> list[str]:
    present = set(names)
    return [n for n in order if n in present]


def _coverage(results: dict[str, Any], planned: int | None) -> str:
    done = len(results["runs"])
    machine = results.get("settings", {}).get("machine", "")
    of = f" of the {planned} planned" if planned is not None and planned != done else ""
    return (
        f"Size `{results['size']}`: {done} runs{of}, last updated {results.get('updated', '?')}, on {machine} "
        "(one torch thread per run, two runs at a time, on a machine shared with other work: ms/step are "
        "indicative only)."
    )


def summary_markdown(results: dict[str, Any], planned: int | None = None) -> str:
    """The headline table: per recipe and condition, runs that met their task's threshold, pooled over tasks."""
    runs = list(results["runs"].values())
    conditions = _ordered({r["condition"] for r in runs}, CONDITIONS)
    recipes = _ordered({r["recipe"] for r in runs}, RECIPES)
    groups = _group(runs, "recipe", "condition")
    header = "| recipe | " + " | ".join(
        f"{CONDITIONS[c].title}: successes | NaN / aborted | diverged" for c in conditions
    )
    lines = [_coverage(results, planned), "", header + " |", "|---" * (1 + 3 * len(conditions)) + "|"]
    for recipe in recipes:
        cells = []
        for condition in conditions:
            stats = cell_stats(groups.get((recipe, condition), []))
            cells += [f"{stats['successes']}/{stats['runs']}", str(stats["nan"]), str(stats["diverged"])]
        lines.append(f"| {RECIPES[recipe].title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def thresholds_markdown(results: dict[str, Any]) -> str:
    """The tasks, their success thresholds (fixed in `tasks.py` before the runs) and their budgets."""
    settings = results.get("settings", {}).get("tasks", {})
    lines = [
        "| task | success: final validation metric | normal LR (Adam) | steps | batch | hidden |",
        "|---|---|---|---|---|---|",
    ]
    for name in _ordered({r["task"] for r in results["runs"].values()}, TASKS):
        task, info = TASKS[name], settings.get(name, {})
        lines.append(
            f"| {task.title} | {task.metric} {task.threshold_text} | {info.get('lr', task.lr):g} | "
            f"{info.get('steps', '?')} | {task.batch_size} | {task.hidden_size} |"
        )
    return "\n".join(lines) + "\n"


def tasks_markdown(results: dict[str, Any]) -> str:
    """One table per task: every recipe and cell under every condition."""
    runs = list(results["runs"].values())
    settings = results.get("settings", {}).get("tasks", {})
    conditions = _ordered({r["condition"] for r in runs}, CONDITIONS)
    groups = _group(runs, "task", "recipe", "cell", "condition")
    out = []
    for task in _ordered({r["task"] for r in runs}, TASKS):
        info = settings.get(task, {})
        out.append(
            f"### {TASKS[task].title}\n\nSuccess: final {TASKS[task].metric} {TASKS[task].threshold_text}; "
            f"Adam, normal LR {info.get('lr', TASKS[task].lr):g}, {info.get('steps', '?')} steps, batch "
            f"{TASKS[task].batch_size}, hidden {TASKS[task].hidden_size}. Steps to success: first evaluation "
            "(every fifth of the budget) meeting the threshold, median over the successful runs.\n"
        )
        header = "| recipe | cell | " + " | ".join(
            f"{c}: success | steps | final {TASKS[task].metric} | NaN / div." for c in conditions
        )
        out += [header + " | ms/step |", "|---" * (3 + 4 * len(conditions)) + "|"]
        task_runs = [r for r in runs if r["task"] == task]
        for recipe in _ordered({r["recipe"] for r in task_runs}, RECIPES):
            for cell in _ordered({r["cell"] for r in task_runs}, ("lstm", "gru")):
                cells, all_runs = [], []
                for condition in conditions:
                    group = groups.get((task, recipe, cell, condition), [])
                    all_runs += group
                    s = cell_stats(group)
                    cells += [
                        f"{s['successes']}/{s['runs']}",
                        _fmt(s["steps_to_success"]),
                        _fmt(s["final_metric"]),
                        f"{s['nan']} / {s['diverged']}",
                    ]
                ms = cell_stats(all_runs)["ms_per_step"] if all_runs else None
                lines = f"| {RECIPES[recipe].title} | {cell.upper()} | " + " | ".join(cells)
                out.append(lines + f" | {'–' if ms is None else f'{ms:.0f}'} |")
        out.append("")
    return "\n".join(out)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """`success_rate.png` (per recipe, task and condition) and `stress_loss_curves.png` (seed 0 under stress)."""
    plt = _pyplot()
    runs = list(results["runs"].values())
    tasks = _ordered({r["task"] for r in runs}, TASKS)
    recipes = _ordered({r["recipe"] for r in runs}, RECIPES)
    conditions = _ordered({r["condition"] for r in runs}, CONDITIONS)
    groups = _group(runs, "task", "recipe", "condition")
    paths = []

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharey=True, squeeze=False)
    width = 0.8 / max(1, len(conditions))
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, condition in enumerate(conditions):
            rates = []
            for recipe in recipes:
                group = groups.get((task, recipe, condition), [])
                rates.append(sum(r["success"] for r in group) / len(group) if group else 0.0)
            xs = [x + (i - (len(conditions) - 1) / 2) * width for x in range(len(recipes))]
            ax.bar(xs, rates, width=width, label=CONDITIONS[condition].title)
        ax.set_xticks(range(len(recipes)), [RECIPES[r].title.split(" ")[0] for r in recipes])
        ax.set_title(TASKS[task].title, fontsize=9)
        ax.set_ylim(0, 1.05)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("success rate (LSTM + GRU, all seeds)")
    axes[1][0].set_ylabel("success rate")
    legend = "recipes: " + "; ".join(RECIPES[r].title.replace("`", "") for r in recipes)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper right", fontsize=8)
    fig.text(0.01, 0.005, legend, fontsize=6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    paths.append(_save(plt, fig, folder / "success_rate.png"))

    stress = [c for c in conditions if CONDITIONS[c].corrupt or CONDITIONS[c].lr_factor != 1.0]
    curves = _group([r for r in runs if r["seed"] == 0 and r["condition"] in stress], "task", "cell")
    cells = _ordered({r["cell"] for r in runs}, ("lstm", "gru"))
    if curves:
        fig, axes = plt.subplots(
            len(cells), len(tasks), figsize=(3 * len(tasks), 2.8 * len(cells)), squeeze=False
        )
        for row, cell in enumerate(cells):
            for col, task in enumerate(tasks):
                ax = axes[row][col]
                for run in sorted(curves.get((task, cell), []), key=lambda r: recipes.index(r["recipe"])):
                    points = run["loss_curve"]
                    xs = [run["steps"] * (i + 0.5) / len(points) for i in range(len(points))]
                    ys = [float("nan") if p is None else p for p in points]
                    ax.plot(xs, ys, linewidth=0.9, label=RECIPES[run["recipe"]].title.split(" ")[0])
                ax.set_yscale("log")
                ax.set_title(f"{TASKS[task].title.split(',')[0]}, {cell.upper()}", fontsize=8)
                ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=6, title="recipe", title_fontsize=6)
        fig.suptitle("Training loss under stress, seed 0 (gaps: non-finite loss)", fontsize=10)
        fig.tight_layout()
        paths.append(_save(plt, fig, folder / "stress_loss_curves.png"))
    return paths


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], folder: Path, planned: int | None = None) -> list[Path]:
    """Writes `summary.md`, `tasks.md` and the plots into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.md").write_text(summary_markdown(results, planned))
    (folder / "thresholds.md").write_text(thresholds_markdown(results))
    (folder / "tasks.md").write_text(tasks_markdown(results))
    tables = [folder / name for name in ("summary.md", "thresholds.md", "tasks.md")]
    return [*tables, *write_plots(results, folder)]
