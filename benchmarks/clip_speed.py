"""Every clipping call of ``rnn_stability.functional`` against its published reference, in one run (issue 20).

Two sizes:

- **240k**: a 2-layer LSTM 64 -> 128 with a linear head (239 680 gradient elements), on the gradient stream
  recorded while training it (``--steps`` Adam steps of next-frame prediction, with the occasional outlier
  batch that makes a gradient spike). Every call sees the same stream, in order: each step's recorded
  gradients are copied back (untimed) before the call, and the stateful clippers start afresh every round.
- **14.7M**: a 2-layer LSTM 512 -> 1024 (14 696 448 elements) with the same random gradients every step, so no
  norm rule clips (the norm never moves off its mean); value clipping clamps a handful of elements.
  ``--large-warmup`` untimed steps first (ZClip's 25 warm-up steps), then ``--large-steps`` timed steps.

Rounds alternate the calls (rotating the rows and swapping ours/reference every round), so slow drifts of a
shared machine hit both sides alike; each call's time is the mean per step of a round, reported as the
median over rounds, and the ratio is the median of the per-round ratios (with their range). The references
are in ``clip_references.py``. Results: ``benchmarks/results/clip_speed.md`` and ``.json``.

Run (the references come with the ``bench`` extra, timm without its dependencies)::

    pip install -e ".[bench]" torch==2.13.0 && pip install --no-deps timm
    python benchmarks/clip_speed.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from clip_references import (
    LargeModel,
    autoclip_listing,
    large_gradients,
    record_small_stream,
    timm_agc,
)
from torch import nn

from rnn_stability.functional import (
    PercentileClipper,
    ZScoreClipper,
    adaptive_grad_clip_,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    total_grad_norm,
)

RESULTS = Path(__file__).parent / "results"
Step = Callable[[], None]
Factory = Callable[[nn.Module, list[nn.Parameter]], Step]  # a fresh call (fresh state) for one round


@dataclass
class Row:
    size: str
    ours: str
    make_ours: Factory
    reference: str
    make_reference: Factory
    target: float = 1.0
    ours_us: list[float] = field(default_factory=list)  # thread CPU time, mean per step, one per round
    reference_us: list[float] = field(default_factory=list)
    ours_wall_us: list[float] = field(default_factory=list)
    reference_wall_us: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours_us, self.reference_us, strict=True)]

    @property
    def wall_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours_wall_us, self.reference_wall_us, strict=True)]


def _adaptive(clipper: PercentileClipper | ZScoreClipper, params: list[nn.Parameter]) -> Step:
    """How a loop uses our adaptive clippers: total norm, threshold, rescale (the callback's path too)."""

    def step() -> None:
        pre = total_grad_norm(params)
        clip_grads_with_norm_(params, clipper.step(pre), pre)

    return step


def _zclip(mode: str) -> Factory:
    import zclip

    def make(model: nn.Module, params: list[nn.Parameter]) -> Step:
        reference = zclip.ZClip(mode=mode, max_grad_norm=None)  # as ours: no absolute cap
        return lambda: reference.step(model)

    return make


def _quantile_clip(model: nn.Module, params: list[nn.Parameter]) -> Step:
    from autoclip.torch import QuantileClip

    return QuantileClip(model.parameters(), quantile=0.9, history_length=1000, global_threshold=True).step


def rows(size: str, value: float, agc: Callable[..., None] | None) -> list[Row]:
    nothing = ", nothing clipped" if size == "14.7M" else ""
    out = [
        Row(
            size,
            f"`clip_grad_value_(…, {value:g})`",
            lambda m, p: lambda: clip_grad_value_(p, value),
            "`torch.nn.utils.clip_grad_value_`",
            lambda m, p: lambda: torch.nn.utils.clip_grad_value_(p, value),
        ),
        Row(
            size,
            f"`clip_grad_norm_(…, 1.0)`{nothing}",
            lambda m, p: lambda: clip_grad_norm_(p, 1.0),
            "`torch.nn.utils.clip_grad_norm_`",
            lambda m, p: lambda: torch.nn.utils.clip_grad_norm_(p, 1.0),
            target=0.70 if size == "14.7M" else 1.0,
        ),
        Row(
            size,
            f"`ZScoreClipper()` (norm + step + rescale){nothing}",
            lambda m, p: _adaptive(ZScoreClipper(), p),
            '`zclip.ZClip(mode="percentile")`',
            _zclip("percentile"),
        ),
        Row(
            size,
            f'`ZScoreClipper(clip_rule="reciprocal")`{nothing}',
            lambda m, p: _adaptive(ZScoreClipper(clip_rule="reciprocal"), p),
            '`zclip.ZClip(mode="zscore")`',
            _zclip("zscore"),
        ),
        Row(
            size,
            "`PercentileClipper(10)` (AutoClip)",
            lambda m, p: _adaptive(PercentileClipper(10.0, 1000), p),
            "AutoClip paper listing",
            lambda m, p: autoclip_listing(m, 10.0),
        ),
        Row(
            size,
            "`PercentileClipper(90, window_size=1000)`",
            lambda m, p: _adaptive(PercentileClipper(90.0, 1000), p),
            "`autoclip.torch.QuantileClip(global_threshold=True)`",
            _quantile_clip,
        ),
    ]
    if agc is not None:
        out.append(
            Row(
                size,
                "`adaptive_grad_clip_(…, 0.01)`",
                lambda m, p: lambda: adaptive_grad_clip_(p, 0.01),
                "`timm.utils.agc.adaptive_clip_grad`",
                lambda m, p: lambda: agc(p, 0.01),
                target=0.60,
            )
        )
    return out


def _time_call(
    step: Step, params: list[nn.Parameter], stream: list[list[torch.Tensor]] | None, untimed: int, timed: int
) -> tuple[float, float]:
    """Mean (thread CPU, wall) µs per timed step; with a ``stream``, step t's gradients are first copied back.

    Thread CPU time leaves out the time the thread waited for a core, the main noise on a shared machine.
    """
    grads = [p.grad for p in params]
    cpu = wall = 0
    for t in range(untimed + timed):
        if stream is not None:
            torch._foreach_copy_(grads, stream[t])
        start_cpu, start_wall = time.thread_time_ns(), time.perf_counter_ns()
        step()
        end_wall, end_cpu = time.perf_counter_ns(), time.thread_time_ns()
        if t >= untimed:
            cpu += end_cpu - start_cpu
            wall += end_wall - start_wall
    return cpu / timed / 1e3, wall / timed / 1e3


def measure(
    table: list[Row],
    model: nn.Module,
    stream: list[list[torch.Tensor]] | None,
    rounds: int,
    untimed: int,
    timed: int,
) -> None:
    params = list(model.parameters())
    for index in range(rounds):
        shift = index % len(table)
        for row in table[shift:] + table[:shift]:
            sides = [
                (row.make_ours, row.ours_us, row.ours_wall_us),
                (row.make_reference, row.reference_us, row.reference_wall_us),
            ]
            for make, cpu_times, wall_times in sides if index % 2 == 0 else sides[::-1]:
                cpu, wall = _time_call(make(model, params), params, stream, untimed, timed)
                cpu_times.append(cpu)
                wall_times.append(wall)
        print(f"  round {index + 1}/{rounds}", flush=True)


def report(table: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| size | our call | µs / step | reference | µs / step | ratio | per-round ratios | wall ratio | target"
        " | met |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in table:
        ratio = statistics.median(row.ratios)
        lines.append(
            f"| {row.size} | {row.ours} | {statistics.median(row.ours_us):,.1f} | {row.reference}"
            f" | {statistics.median(row.reference_us):,.1f} | {ratio:.2f}×"
            f" | {min(row.ratios):.2f}–{max(row.ratios):.2f} | {statistics.median(row.wall_ratios):.2f}×"
            f" | ≤ {row.target:.2f}× | {'yes' if ratio <= row.target else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _versions() -> str:
    names = ["torch", "numpy", "zclip", "autoclip", "timm"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except Exception:  # noqa: BLE001 - not installed
            found.append(f"{name} absent")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="recorded steps of the 240k stream")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds at 240k")
    parser.add_argument("--large-rounds", type=int, default=21, help="alternating rounds at 14.7M")
    parser.add_argument("--large-warmup", type=int, default=30, help="untimed steps per call at 14.7M")
    parser.add_argument("--large-steps", type=int, default=8, help="timed steps per call at 14.7M")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "clip_speed.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    agc = timm_agc()
    if agc is None:
        print("timm is not installed (`pip install --no-deps timm`): the AGC rows are left out")

    print(f"recording {args.steps} training steps of the 240k model", flush=True)
    small, stream = record_small_stream(args.steps)
    for p, g in zip(small.parameters(), stream[0], strict=True):
        p.grad = g.clone()
    small_rows = rows("240k", 0.01, agc)
    measure(small_rows, small, stream, args.rounds, 0, args.steps)
    norms = torch.stack([torch.linalg.vector_norm(torch.stack([g.norm() for g in step])) for step in stream])
    del stream

    large = LargeModel()
    for p, g in zip(large.parameters(), large_gradients(large), strict=True):
        p.grad = g
    large_rows = rows("14.7M", 1e-4, agc)
    print("14.7M", flush=True)
    measure(large_rows, large, None, args.large_rounds, args.large_warmup, args.large_steps)

    table = small_rows + large_rows
    header = (
        f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s); {_versions()}."
        f" 240k: {args.steps}-step recorded stream (total norm median {norms.median():.3g},"
        f" max {norms.max():.3g}), {args.rounds} rounds; 14.7M: same random gradients every step (norm"
        f" {total_grad_norm(list(large.parameters())):.3g}), {args.large_steps} timed steps after"
        f" {args.large_warmup} untimed, {args.large_rounds} rounds. µs / step: thread CPU time, median over"
        " rounds of the mean per step; ratio: median of the per-round ratios ours / reference (CPU time;"
        " wall ratio: the same on elapsed time, which also counts waits for a core on a shared machine)."
    )
    text = report(table, header)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    raw: dict[str, Any] = {
        "header": header,
        "rows": [
            {
                "size": r.size,
                "ours": r.ours,
                "reference": r.reference,
                "ours_cpu_us": r.ours_us,
                "reference_cpu_us": r.reference_us,
                "ours_wall_us": r.ours_wall_us,
                "reference_wall_us": r.reference_wall_us,
                "ratio": statistics.median(r.ratios),
                "wall_ratio": statistics.median(r.wall_ratios),
                "target": r.target,
            }
            for r in table
        ],
    }
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
