"""Torch's modules against the `layer_norm` variants, for LSTM and GRU.

Part of the evidence behind `rnn_stability.nn.layer_norm.DEFAULT_LAYER_NORM` (the rest is the stability suite,
`benchmarks/stability`, which decided it), in four parts:

1. Input scale: `max |out(x) - out(3 x)|` of freshly initialised modules (standard normal input, hidden 32,
   20 steps, mean over seeds) for `input_size` 1 to 64. Normalising `W_ih x` on its own ("separate") makes
   a module blind to the scale of its input: with one input feature only the sign of `x_t` is left;
   "scaled" (what `True` means) multiplies it back by the input's magnitude.
2. Univariate forecasting as darts does it: a series min-max scaled to [0, 1] with the statistics of its
   training part, windows of `window` steps, the next value predicted from the last hidden state (hidden
   16, Adam, full batch). Test MAE in scaled units against the seasonal-naive forecast. Series: a generated
   monthly series (trend, season of 12 with slowly varying amplitude, noise) and the yearly sunspot numbers
   shipped with statsmodels (season 11).
3. Sequential 8×8 digits (scikit-learn's `load_digits`, one pixel in [0, 1] per step, T = 64): validation
   accuracy after a fixed budget at the normal learning rate and at 10× that, where normalisation is meant
   to keep training stable.
4. The adding problem (T = 50; two features: a value in [0, 1] and a 0/1 marker), the task of the demo:
   held-out MSE after 200 and 600 Adam steps. Here "separate" has an edge that is the flip side of its
   blindness: `LN(W_ih x)` of an unmarked step is the same whatever its value, so the distractors are erased.

The tables are printed and written to `benchmarks/results/layer_norm_variants.md` (`--quick`: one seed, fewer
steps, no file).

Usage::

    python benchmarks/layer_norm_variants.py [--seeds 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from rnn_stability.data import adding_problem
from rnn_stability.nn import GRU, LSTM
from rnn_stability.nn.layer_norm import DEFAULT_LAYER_NORM, LAYER_NORM_VARIANTS, check_layer_norm

__all__ = ["forecast_mae", "main", "scale_sensitivity", "seasonal_series", "sunspot_series"]

RESULTS = Path(__file__).parent / "results" / "layer_norm_variants.md"
IMPLEMENTATIONS = ("torch", *LAYER_NORM_VARIANTS)
KINDS = ("LSTM", "GRU")


def build(kind: str, implementation: str, input_size: int, hidden_size: int) -> nn.RNNBase:
    """A batch-first one-layer LSTM / GRU: torch's, or ours with `layer_norm=implementation`."""
    if implementation == "torch":
        return (nn.LSTM if kind == "LSTM" else nn.GRU)(input_size, hidden_size, batch_first=True)
    return (LSTM if kind == "LSTM" else GRU)(
        input_size, hidden_size, batch_first=True, layer_norm=check_layer_norm(implementation)
    )


class LastStep(nn.Module):
    """A recurrent layer and a linear head on its last hidden state."""

    def __init__(self, rnn: nn.RNNBase, outputs: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(rnn.hidden_size, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


# ---- 1. input scale ------------------------------------------------------------------------------------------


def scale_sensitivity(
    kind: str, implementation: str, input_size: int, seed: int, factor: float = 3.0
) -> float:
    """`max |out(x) - out(factor x)|` of a fresh module (hidden 32) on standard normal `(16, 20, input_size)`."""
    torch.manual_seed(seed)
    module = build(kind, implementation, input_size, 32)
    x = torch.randn(16, 20, input_size)
    with torch.no_grad():
        return float((module(x)[0] - module(factor * x)[0]).abs().max())


# ---- 2. univariate forecasting -------------------------------------------------------------------------------


def seasonal_series(length: int = 400, period: int = 12, seed: int = 0) -> Tensor:
    """Trend + a season of `period` steps whose amplitude drifts slowly + Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    amplitude = 1.0 + 0.5 * torch.sin(2 * math.pi * t / (7.3 * period))
    season = amplitude * torch.sin(2 * math.pi * t / period)
    return 10.0 + 0.01 * t + season + 0.15 * torch.randn(length, generator=gen)


def sunspot_series() -> Tensor:
    """Yearly mean sunspot numbers 1700-2008 from `statsmodels.datasets.sunspots` (no download)."""
    from statsmodels.datasets import sunspots

    values = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    return torch.tensor(values, dtype=torch.float32)


def windows(series: Tensor, window: int, season: int, test_fraction: float = 0.2) -> dict[str, Tensor]:
    """Min-max scaled (training part's range) windows, next values and seasonal-naive forecasts, split."""
    split = int(len(series) * (1 - test_fraction))
    low, high = series[:split].min(), series[:split].max()
    scaled = (series - low) / (high - low)
    inputs = scaled.unfold(0, window, 1)[:-1].unsqueeze(-1)  # window i ends just before target i
    targets = scaled[window:].unsqueeze(-1)
    naive = scaled[window - season : len(series) - season].unsqueeze(-1)
    train = split - window
    return {
        "train_x": inputs[:train],
        "train_y": targets[:train],
        "test_x": inputs[train:],
        "test_y": targets[train:],
        "test_naive": naive[train:],
    }


def forecast_mae(
    kind: str, implementation: str, data: dict[str, Tensor], seed: int, steps: int = 400, lr: float = 1e-2
) -> float:
    """Test MAE (scaled units) of a hidden-16 model trained full batch with Adam for `steps` steps."""
    torch.manual_seed(seed)
    model = LastStep(build(kind, implementation, 1, 16), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(data["train_x"]), data["train_y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((model(data["test_x"]) - data["test_y"]).abs().mean())


# ---- 3. sequential digits ------------------------------------------------------------------------------------


def pixel_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8×8 digits as `(N, 64, 1)` pixel sequences in [0, 1]: train and validation splits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).div(16.0).unsqueeze(-1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:-360], y[:-360], x[-360:], y[-360:]


def digits_accuracy(
    kind: str, implementation: str, data: tuple[Tensor, ...], seed: int, steps: int, lr: float
) -> float:
    """Validation accuracy of a hidden-32 classifier after `steps` Adam steps of batch 64 (NaN loss: 0.1)."""
    train_x, train_y, val_x, val_y = data
    torch.manual_seed(seed)
    model = LastStep(build(kind, implementation, 1, 32), 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(train_y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((model(val_x).argmax(-1) == val_y).float().mean())


# ---- 4. adding problem --------------------------------------------------------------------------------------


def adding_mse(kind: str, implementation: str, seed: int, checkpoints: tuple[int, ...]) -> list[float]:
    """Held-out MSE (1000 sequences, T = 50) of a hidden-32 model after each of `checkpoints` Adam steps
    (lr 3e-3, fresh batches of 50)."""
    val_x, val_y = adding_problem(1000, 50, generator=torch.Generator().manual_seed(10_000))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LastStep(build(kind, implementation, 2, 32), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    results = []
    for step in range(1, max(checkpoints) + 1):
        x, y = adding_problem(50, 50, generator=gen)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            with torch.no_grad():
                results.append(float(nn.functional.mse_loss(model(val_x), val_y)))
    return results


# ---- tables --------------------------------------------------------------------------------------------------


def _cell(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _header(first: list[str]) -> list[str]:
    names = [
        f"`{name}`" + (" (= `True`)" if name == DEFAULT_LAYER_NORM else "") for name in LAYER_NORM_VARIANTS
    ]
    columns = [*first, "torch", *names]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(first) + "---:|" * len(IMPLEMENTATIONS)]


def _timed(title: str, rows: Callable[[], list[str]]) -> list[str]:
    start = time.perf_counter()
    lines = rows()
    print(f"{title}: {time.perf_counter() - start:.0f} s", flush=True)
    return lines


def scale_table(seeds: int) -> list[str]:
    lines = _header(["module", "input_size"])
    for kind in KINDS:
        for size in (1, 2, 3, 8, 64):
            cells = [
                _cell([scale_sensitivity(kind, impl, size, seed) for seed in range(seeds)])
                for impl in IMPLEMENTATIONS
            ]
            lines.append(f"| {kind} | {size} | " + " | ".join(cells) + " |")
    return lines


def forecast_table(seeds: int, steps: int) -> list[str]:
    series = {
        "generated, season 12, window 24": (seasonal_series(), 12, 24),
        "sunspots, season 11, window 22": (sunspot_series(), 11, 22),
    }
    lines = _header(["series", "module", "seasonal naive"])
    for name, (values, season, window) in series.items():
        data = windows(values, window, season)
        naive = float((data["test_naive"] - data["test_y"]).abs().mean())
        for kind in KINDS:
            cells = [
                _cell([forecast_mae(kind, impl, data, seed, steps) for seed in range(seeds)])
                for impl in IMPLEMENTATIONS
            ]
            lines.append(f"| {name} | {kind} | {naive:.3f} | " + " | ".join(cells) + " |")
    return lines


def digits_table(seeds: int, steps: int) -> list[str]:
    data = pixel_digits()
    lines = _header(["module", "learning rate"])
    for kind in KINDS:
        for lr in (3e-3, 3e-2):
            cells = [
                _cell([digits_accuracy(kind, impl, data, seed, steps, lr) for seed in range(seeds)], 2)
                for impl in IMPLEMENTATIONS
            ]
            lines.append(f"| {kind} | {lr:g} | " + " | ".join(cells) + " |")
    return lines


def adding_table(seeds: int, checkpoints: tuple[int, ...]) -> list[str]:
    lines = _header(["module", "steps"])
    for kind in KINDS:
        runs = {
            impl: [adding_mse(kind, impl, seed, checkpoints) for seed in range(seeds)]
            for impl in IMPLEMENTATIONS
        }
        for k, steps in enumerate(checkpoints):
            cells = [_cell([run[k] for run in runs[impl]]) for impl in IMPLEMENTATIONS]
            lines.append(f"| {kind} | {steps} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (mean ± standard deviation)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer steps, write no file")
    args = parser.parse_args()
    if args.seeds < 1:
        raise ValueError(f"`--seeds` must be a positive int, got {args.seeds}")
    torch.set_num_threads(args.threads)
    seeds = 1 if args.quick else args.seeds
    forecast_steps, digits_steps = (100, 100) if args.quick else (400, 400)
    adding_steps = (100, 200) if args.quick else (200, 600)
    sections = [
        f"torch {torch.__version__}, CPU, {args.threads} thread(s), {seeds} seed(s) per cell (mean ± standard "
        f"deviation); `layer_norm=True` means `{DEFAULT_LAYER_NORM!r}`. Generated by "
        "`benchmarks/layer_norm_variants.py`.",
        "",
        "### 1. Input scale: max |out(x) − out(3x)|, fresh modules (larger: the input's scale reaches the output)",
        "",
        *_timed("input scale", lambda: scale_table(max(seeds, 5))),
        "",
        f"### 2. Univariate forecasting, min-max scaled to [0, 1]: test MAE ({forecast_steps} full-batch Adam "
        "steps, lr 0.01; lower is better)",
        "",
        *_timed("forecasting", lambda: forecast_table(seeds, forecast_steps)),
        "",
        f"### 3. Sequential 8×8 digits (one pixel per step, T = 64): validation accuracy after {digits_steps} "
        "Adam steps of batch 64 (higher is better)",
        "",
        *_timed("digits", lambda: digits_table(seeds, digits_steps)),
        "",
        "### 4. Adding problem, T = 50 (value and marker): held-out MSE (mean predictor: 0.167, solved: < 0.01; "
        "lower is better)",
        "",
        *_timed("adding problem", lambda: adding_table(seeds, adding_steps)),
    ]
    text = "\n".join(sections) + "\n"
    print(text)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
