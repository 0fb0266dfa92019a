"""The demo's figures: loss curves, gradient norms and the temporal gradient-flow heatmap."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rnn_stability.demo.config import MEAN_BASELINE_MSE, SOLVED_MSE
from rnn_stability.demo.worker import RunResult

__all__ = ["GRAD_NORM_KEYS", "THRESHOLD_KEYS", "find_series", "write_plots"]

#: Logged keys holding the total gradient norm before clipping, most specific first.
GRAD_NORM_KEYS = ("grad_norm/total_pre_clip", "grad_norm/total", "grad_norm/total_post_clip")
#: Logged keys holding the clipping threshold.
THRESHOLD_KEYS = ("grad_clip/threshold", "clip/threshold", "gradient_clipping/threshold")
_COLORS = {"vanilla": "tab:red", "stable": "tab:blue"}


def find_series(metrics: dict[str, list[tuple[int, float]]], keys: Sequence[str]) -> list[tuple[int, float]]:
    """The first of `keys` present in `metrics` (exact match, then as a suffix), or `[]`.

    Examples:
        >>> find_series({"a/grad_norm/total": [(1, 2.0)]}, ["grad_norm/total"])
        [(1, 2.0)]
    """
    for key in keys:
        if key in metrics:
            return metrics[key]
    for key in keys:
        for name, series in metrics.items():
            if name.endswith(key):
                return series
    return []


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - matplotlib is in the `plot` extra
        raise ImportError("The demo's plots need matplotlib: pip install 'rnn-stability[plot]'.") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _loss_curves(plt: Any, results: Sequence[RunResult], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for r in results:
        steps = range(1, len(r.losses) + 1)
        color = _COLORS.get(r.name)
        ax.plot(steps, r.losses, color=color, alpha=0.2, linewidth=0.7)
        ax.plot(steps, r.smoothed, color=color, label=f"{r.name}: {r.title}")
    ax.axhline(MEAN_BASELINE_MSE, color="gray", linestyle="--", label="predict the mean (1/6)")
    ax.axhline(SOLVED_MSE, color="green", linestyle=":", label=f"solved (MSE < {SOLVED_MSE:g})")
    ax.set(
        yscale="log",
        xlabel="optimizer step",
        ylabel="training MSE (moving average)",
        title="Adding problem: loss",
    )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    _save(plt, fig, path)


def _grad_norms(plt: Any, results: Sequence[RunResult], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        color = _COLORS.get(r.name)
        series = find_series(r.metrics, GRAD_NORM_KEYS)
        if series:
            ax.plot(
                *zip(*series, strict=True),
                color=color,
                linewidth=0.8,
                label=f"{r.name}: total norm before clipping",
            )
        threshold = find_series(r.metrics, THRESHOLD_KEYS)
        if threshold:
            ax.plot(
                *zip(*threshold, strict=True),
                color=color,
                linestyle="--",
                label=f"{r.name}: clipping threshold",
            )
    ax.set(yscale="log", xlabel="optimizer step", ylabel="gradient norm", title="Gradient norms")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def _flow_profiles(plt: Any, results: Sequence[RunResult], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        step, profile = r.flow_history[-1]
        top = max(profile) or 1.0
        ax.plot(range(len(profile)), [v / top for v in profile], color=_COLORS.get(r.name), label=r.name)
    ax.set(
        yscale="log",
        xlabel="time step t (the loss is computed after the last one)",
        ylabel="‖∂L/∂x_t‖ / max",
        title=f"Gradient flow at the last measurement (step {step})",
    )
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def write_plots(results: Sequence[RunResult], output_dir: Path) -> list[Path]:
    """Writes the demo's figures into `output_dir`.

    `loss_curves.png` (training MSE), `grad_norms.png` (total gradient norm before clipping, and the
    clipping threshold), and, for runs with a gradient-flow history, `gradient_flow_<run>.png` (heatmap
    drawn by `rnn_stability.callbacks.plot_flow_heatmap`) and `gradient_flow_profiles.png` (the
    last profile of every run, each divided by its maximum).

    Args:
        results: the runs to draw.
        output_dir: an existing folder.

    Returns:
        The paths of the files written (the flow figure only when a run has a gradient-flow history).
    """
    plt = _pyplot()
    paths = [output_dir / "loss_curves.png", output_dir / "grad_norms.png"]
    _loss_curves(plt, results, paths[0])
    _grad_norms(plt, results, paths[1])
    with_flow = [r for r in results if r.flow_history]
    if with_flow:
        from rnn_stability.callbacks import plot_flow_heatmap

        for r in with_flow:
            path = output_dir / f"gradient_flow_{r.name}.png"
            steps = [step for step, _ in r.flow_history]
            profiles = [torch.tensor(profile) for _, profile in r.flow_history]
            plot_flow_heatmap(steps, profiles, title=f"{r.name}: {r.title}", path=path)
            paths.append(path)
        paths.append(output_dir / "gradient_flow_profiles.png")
        _flow_profiles(plt, with_flow, paths[-1])
    return paths
