"""The demo's figures: loss curves, gradient norms and the temporal gradient-flow heatmap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rnn_stability.demo.config import MEAN_BASELINE_MSE, SOLVED_MSE
from rnn_stability.demo.worker import RunResult

__all__ = ["GRAD_NORM_KEYS", "POST_CLIP_KEYS", "THRESHOLD_KEYS", "find_series", "smooth", "write_plots"]

#: Logged keys holding the total gradient norm before clipping: the clipper's, else the monitor's.
GRAD_NORM_KEYS = ("grad_clip/pre_clip_norm", "grad_norm/total_pre_clip")
#: Logged keys holding the total gradient norm after clipping (the one the optimizer used).
POST_CLIP_KEYS = ("grad_clip/post_clip_norm", "grad_norm/total_post_clip")
#: Logged keys holding the clipping threshold.
THRESHOLD_KEYS = ("grad_clip/threshold",)
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


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average of `log(values)`, back on the original scale (a running geometric mean).

    Gradient norms spread over orders of magnitude, so they are averaged on the log scale they are drawn on.
    Non-positive and non-finite values are skipped (the average carries on over them).

    Examples:
        >>> [round(v, 3) for v in smooth([1.0, 100.0, 100.0], weight=0.5)]
        [1.0, 10.0, 31.623]
    """
    out: list[float] = []
    level: float | None = None
    for value in values:
        if value > 0 and math.isfinite(value):
            log = math.log(value)
            level = log if level is None else weight * level + (1 - weight) * log
        out.append(math.nan if level is None else math.exp(level))
    return out


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
    # One panel per run on a shared scale: the norm before clipping, the norm the optimizer used and the
    # threshold, each logged value faint and its running geometric mean solid.
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        color = _COLORS.get(r.name, "tab:gray")
        pre, post = find_series(r.metrics, GRAD_NORM_KEYS), find_series(r.metrics, POST_CLIP_KEYS)
        threshold = find_series(r.metrics, THRESHOLD_KEYS)
        clipped = bool(threshold) and any(b < a for (_, a), (_, b) in zip(pre, post, strict=False))
        lines = [(pre, color, "-", "before clipping" if clipped else "total norm (not clipped)")]
        if clipped:
            lines += [
                (post, "black", "-", "after clipping"),
                (threshold, "tab:green", "--", "clipping threshold"),
            ]
        for series, line_color, style, label in lines:
            if not series:
                continue
            steps, values = zip(*series, strict=True)
            ax.plot(steps, values, color=line_color, linestyle=style, alpha=0.25, linewidth=0.7)
            ax.plot(steps, smooth(values), color=line_color, linestyle=style, linewidth=1.6, label=label)
        ax.set(yscale="log", xlabel="optimizer step", title=r.name)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("total gradient norm (smoothed; raw faint)")
    fig.suptitle("Gradient norms", fontsize=11)
    _save(plt, fig, path)


def _flow_profiles(plt: Any, results: Sequence[RunResult], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    summaries = []
    for r in results:
        step, profile = r.flow_history[-1]
        top = max(profile) or 1.0
        memory = "n/a" if r.memory_length is None else f"{r.memory_length:.0f}/{len(profile)}"
        summary = f"{r.name}: memory {memory}, {r.flow_verdict or 'no verdict'}"
        summaries.append(summary)
        ax.plot(range(len(profile)), [v / top for v in profile], color=_COLORS.get(r.name), label=summary)
    ax.set(
        yscale="log",
        xlabel="time step t (the loss is computed after the last one)",
        ylabel="‖∂L/∂x_t‖ / max",
    )
    ax.set_title(f"Gradient flow at step {step}\n" + "; ".join(summaries), fontsize=10)
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def _shared_log10_range(results: Sequence[RunResult]) -> tuple[float, float] | None:
    """One colour scale for all heatmaps: the log10 range of every positive finite norm they show."""
    logs = [
        math.log10(v)
        for r in results
        for _, profile in r.flow_history
        for v in profile
        if v > 0 and math.isfinite(v)
    ]
    return (min(logs), max(logs)) if logs else None


def write_plots(results: Sequence[RunResult], output_dir: Path) -> list[Path]:
    """Writes the demo's figures into `output_dir`.

    `loss_curves.png` (training MSE), `grad_norms.png` (one panel per run: total gradient norm before and
    after clipping and the clipping threshold, raw and smoothed), and, for runs with a gradient-flow
    history, `gradient_flow_<run>.png` (heatmap drawn by `rnn_stability.callbacks.plot_flow_heatmap`,
    one colour scale for all runs) and `gradient_flow_profiles.png` (the last profile of every run, each
    divided by its maximum, titled with memory length and verdict).

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

        log10_range = _shared_log10_range(with_flow)
        for r in with_flow:
            path = output_dir / f"gradient_flow_{r.name}.png"
            steps = [step for step, _ in r.flow_history]
            profiles = [torch.tensor(profile) for _, profile in r.flow_history]
            plot_flow_heatmap(
                steps, profiles, title=f"{r.name}: {r.title}", path=path, log10_range=log10_range
            )
            paths.append(path)
        paths.append(output_dir / "gradient_flow_profiles.png")
        _flow_profiles(plt, with_flow, paths[-1])
    return paths
