"""Pictures of temporal gradient flow: a heatmap over training and the latest profile (matplotlib).

matplotlib is an optional dependency (the `plot` extra); it is imported only when a figure is drawn.
Figures are built with `matplotlib.figure.Figure` and the Agg canvas, without pyplot, so drawing does
not touch global GUI state and works in any thread and on headless machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure_to_array", "plot_flow_heatmap", "plot_flow_profile", "require_matplotlib"]


def require_matplotlib() -> None:
    """Import matplotlib or explain how to install it.

    Raises:
        ImportError: if matplotlib is not installed, naming the `plot` extra.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:  # pragma: no cover - matplotlib is installed in CI
        raise ImportError(
            "Gradient-flow plots need matplotlib, which is not installed. Install the `plot` extra "
            "(`pip install 'rnn-stability[plot]'`) or pass `save_plots=False`."
        ) from err


def _new_figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # fixed margins: constrained layout would double the drawing time
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.9)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str] | None) -> None:
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, format="png")


def plot_flow_heatmap(
    steps: Sequence[int],
    profiles: Sequence[Tensor],
    *,
    title: str = "gradient flow",
    path: str | os.PathLike[str] | None = None,
    log10_range: tuple[float, float] | None = None,
) -> Figure:
    """Heatmap of `log10 ‖∂L/∂x_t‖`: training step on the vertical axis, time step on the horizontal one.

    Profiles of different lengths are padded on the right; padding and zero norms are left blank.

    Args:
        steps: the training step of each profile.
        profiles: 1-d profiles (e.g. `[p[name] for _, p in monitor.history]`), one per step.
        title: figure title.
        path: if given, the PNG file to write.
        log10_range: `(low, high)` ends of the colour scale in log10 units; give two heatmaps the same
            range to compare them side by side. `None` spans this heatmap's own values.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: if `steps` and `profiles` differ in length or are empty.
        ImportError: if matplotlib is not installed.

    Examples:
        >>> import torch
        >>> fig = plot_flow_heatmap([0, 10], [torch.ones(5), 0.5 ** torch.arange(4.0, -1.0, -1.0)])
        >>> fig.axes[0].get_xlabel()
        'time step t'
        >>> plot_flow_heatmap([0], [torch.ones(5)], log10_range=(-3, 1)).axes[0].images[0].get_clim()
        (-3.0, 1.0)
    """
    if len(steps) != len(profiles) or len(steps) == 0:
        raise ValueError(
            f"`steps` and `profiles` must be non-empty and of equal length, got {len(steps)} and {len(profiles)}."
        )
    width = max(int(p.numel()) for p in profiles)
    grid = torch.full((len(profiles), width), float("nan"), dtype=torch.float64)
    for row, profile in enumerate(profiles):
        values = profile.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        grid[row, : values.numel()] = values.log10().masked_fill(~(values > 0), float("nan"))
    figure = _new_figure(7.0, 4.0)
    from matplotlib.ticker import MaxNLocator

    axes = figure.add_subplot()
    low, high = log10_range if log10_range is not None else (None, None)
    image = axes.imshow(
        grid.numpy(), aspect="auto", interpolation="nearest", cmap="viridis", vmin=low, vmax=high
    )
    # one row per measurement, labelled with its training step (at most ~10 labels)
    rows = list(range(0, len(steps), max(1, len(steps) // 10)))
    axes.set_yticks(rows, [str(int(steps[row])) for row in rows])
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.colorbar(image, ax=axes, label="log10 ‖∂L/∂x_t‖")
    axes.set_xlabel("time step t")
    axes.set_ylabel("training step")
    axes.set_title(title)
    _save(figure, path)
    return figure


def plot_flow_profile(
    profile: Tensor,
    *,
    output_profile: Tensor | None = None,
    threshold: float | None = None,
    title: str = "gradient flow",
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Line plot (log scale) of one profile `‖∂L/∂x_t‖` against the time step `t`.

    Args:
        profile: 1-d input-gradient profile.
        output_profile: optional ∂L/∂y_t profile drawn alongside.
        threshold: if given, a dashed line at `threshold * max` (the memory-length cut-off).
        title: figure title.
        path: if given, the PNG file to write.

    Returns:
        The matplotlib figure.

    Raises:
        ImportError: if matplotlib is not installed.
        TypeError: if `profile` or `output_profile` is not a tensor.
        ValueError: if `profile` or `output_profile` is not 1-d.

    Examples:
        >>> import torch
        >>> fig = plot_flow_profile(0.5 ** torch.arange(4.0, -1.0, -1.0), threshold=0.1)
        >>> fig.axes[0].get_yscale()
        'log'
    """
    for name, value in (("profile", profile), ("output_profile", output_profile)):
        if value is None and name == "output_profile":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a 1-d tensor, got {type(value).__name__}.")
        if value.dim() != 1:  # a 2-d (per-sequence) profile would be flattened into one long line
            raise ValueError(f"`{name}` must be a 1-d tensor, got shape {tuple(value.shape)}.")
    figure = _new_figure(7.0, 3.5)
    axes = figure.add_subplot()
    values = profile.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    axes.plot(range(values.numel()), values.numpy(), marker=".", label="‖∂L/∂x_t‖ (input)")
    if output_profile is not None:
        out = output_profile.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        axes.plot(range(out.numel()), out.numpy(), marker=".", alpha=0.6, label="‖∂L/∂y_t‖ (output)")
    finite = values[torch.isfinite(values)]
    if threshold is not None and finite.numel() and float(finite.max()) > 0:
        axes.axhline(
            threshold * float(finite.max()), linestyle="--", color="gray", label=f"{threshold:g} × max"
        )
    if bool((values > 0).any()):
        axes.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("time step t")
    axes.set_ylabel("gradient norm")
    axes.set_title(title)
    axes.legend(loc="best", fontsize="small")
    _save(figure, path)
    return figure


def figure_to_array(figure: Figure) -> Any:
    """Render a figure to an `(H, W, 3)` uint8 numpy array (e.g. for `SummaryWriter.add_image`)."""
    canvas: Any = figure.canvas
    canvas.draw()
    rgba = canvas.buffer_rgba()
    import numpy as np

    return np.asarray(rgba)[..., :3].copy()
