"""Training speed of the regularisers of `rnn_stability.nn.LSTM` / `GRU`, as ratios measured in the same run.

Headline shape (T=100, B=32, input 64, H=256, 2 layers), 1 thread, forward + backward. Every module is timed
interleaved with the others (one call of each in turn, repeated) and the median is reported: each option on
its own as a ratio to torch's module, and each option added to `layer_norm=True` (or `"recurrent"` for
`batch_norm`, which `"separate"` excludes) as a ratio to that layer-norm module. Issue 12's targets:
`weight_dropout` <= 1.03x torch, `recurrent_dropout` / `zoneout` <= 1.25x torch, and each of these <= 1.05x the
layer-norm time with `layer_norm` on. `batch_norm` has no target there (it adds a normalisation of the whole
projection, not a mask); its row shows what it costs. Results go to `benchmarks/results/regularization_speed.md`
(and `.json`).

Usage:

    python benchmarks/regularization_speed.py [--repeats 7] [--only LSTM]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM

__all__ = ["main"]

INPUT_SIZE, NUM_LAYERS = 64, 2
HIDDEN, BATCH, STEPS = 256, 32, 100
RESULTS = Path(__file__).parent / "results" / "regularization_speed"
#: name -> (options, target ratio to torch's module).
ALONE: dict[str, tuple[dict[str, Any], float | None]] = {
    "weight_dropout=0.5": ({"weight_dropout": 0.5}, 1.03),
    "input_dropout=0.2": ({"input_dropout": 0.2}, None),
    "recurrent_dropout=0.25": ({"recurrent_dropout": 0.25}, 1.25),
    "zoneout=0.1": ({"zoneout": 0.1}, 1.25),
    "batch_norm": ({"batch_norm": True}, None),
    "weight_dropout + input_dropout (AWD)": ({"weight_dropout": 0.5, "input_dropout": 0.2}, None),
}
LAYER_NORM_TARGET = 1.05


def _module(kind: str, options: dict[str, Any] | None) -> nn.Module:
    torch.manual_seed(0)
    if options is None:
        cls: type[nn.Module] = nn.LSTM if kind == "LSTM" else nn.GRU
        return cls(INPUT_SIZE, HIDDEN, NUM_LAYERS)
    ours = LSTM if kind == "LSTM" else GRU
    return ours(INPUT_SIZE, HIDDEN, NUM_LAYERS, **options)


def _train_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        out, _ = module(x)
        out.sum().backward()
        module.zero_grad(set_to_none=True)

    return run


def measure(modules: dict[str, nn.Module], repeats: int) -> dict[str, float]:
    """Median seconds per training step of every module, all timed interleaved."""
    torch.manual_seed(0)
    x = torch.randn(STEPS, BATCH, INPUT_SIZE, requires_grad=True)
    runs = {name: _train_step(module.train(), x) for name, module in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(2 + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _layer_norm_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"layer_norm": "recurrent" if options.get("batch_norm") else True, **options}


def _mark(ratio: float, target: float | None) -> str:
    return "" if target is None else (" ✓" if ratio <= target else f" ✗ (target {target:.2f})")


def run_kind(kind: str, repeats: int) -> tuple[list[str], dict[str, Any]]:
    modules = {"torch.nn": _module(kind, None), "layer_norm=True": _module(kind, {"layer_norm": True})}
    modules["layer_norm='recurrent'"] = _module(kind, {"layer_norm": "recurrent"})
    for name, (options, _) in ALONE.items():
        modules[name] = _module(kind, options)
        modules[f"layer_norm + {name}"] = _module(kind, _layer_norm_options(options))
    seconds = measure(modules, repeats)
    base = seconds["torch.nn"]
    rows = [
        f"| {kind} | torch.nn | {1000 * base:.1f} ms | 1.00 | |",
        f"| {kind} | layer_norm=True | {1000 * seconds['layer_norm=True']:.1f} ms | "
        f"{seconds['layer_norm=True'] / base:.2f} | 1.00 |",
    ]
    for name, (options, target) in ALONE.items():
        alone = seconds[name] / base
        ln_base = seconds["layer_norm='recurrent'" if options.get("batch_norm") else "layer_norm=True"]
        with_ln = seconds[f"layer_norm + {name}"] / ln_base
        rows.append(
            f"| {kind} | {name} | {1000 * seconds[name]:.1f} ms | {alone:.2f}{_mark(alone, target)} | "
            f"{with_ln:.2f}{_mark(with_ln, None if options.get('batch_norm') else LAYER_NORM_TARGET)} |"
        )
    return rows, {name: seconds[name] for name in seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=("LSTM", "GRU"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = (args.only,) if args.only else ("LSTM", "GRU")
    rows: list[str] = []
    raw: dict[str, Any] = {}
    for kind in kinds:
        kind_rows, raw[kind] = run_kind(kind, args.repeats)
        rows += kind_rows
    table = "\n".join(
        [
            f"Training step (forward + backward), T={STEPS} B={BATCH} input={INPUT_SIZE} H={HIDDEN}, "
            f"{NUM_LAYERS} layers, 1 thread, median of {args.repeats}, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}. Ratios from the same run; the last column is the "
            'ratio to the same module with only `layer_norm=True` (`"recurrent"` for `batch_norm`).',
            "",
            "| module | options | time | × torch.nn | × layer norm alone |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.only is None:
        RESULTS.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
        RESULTS.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
