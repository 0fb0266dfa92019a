"""Speed and memory of `rnn_stability.nn.LSTM` / `GRU` against `torch.nn.LSTM` / `GRU` on CPU.

Every module is timed in the same run as torch's, interleaved (one call of each in turn, repeated), and the
median is reported as a ratio to torch's module: training (forward + backward) and no-grad inference, over a
grid of shapes (hidden size H, batch B, steps T; input 64, 2 layers). The headline shape (T=100, B=32, H=256)
also times every option, with 1 and 2 threads. Peak training memory (one forward + backward at T=1000) is
measured in a fresh process per module: peak resident memory minus that before the call (with glibc's mmap
threshold fixed, so that freed buffers go back to the OS and the peak follows what is allocated). The tables
are printed and written to `benchmarks/results/rnn_speed.md`.

Usage:

    python benchmarks/rnn_speed.py [--mode train|inference|both] [--repeats 15] [--only LSTM] [--quick]

`--only` (one module kind) and `--quick` (headline shape only, no memory) are for checks while tuning; only
a full run writes the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM
from rnn_stability.nn.layer_norm import DEFAULT_LAYER_NORM, LAYER_NORM_VARIANTS

__all__ = ["main"]

INPUT_SIZE, NUM_LAYERS = 64, 2
HEADLINE = (256, 32, 100)  # H, B, T
#: (H, B, T) rows of the grid, all at 1 thread; the headline row is also run with 2 threads.
GRID = [
    (32, 8, 100),
    (128, 32, 100),
    (256, 32, 100),
    (512, 32, 100),
    (1024, 16, 50),
    (256, 1, 100),
    (256, 128, 50),
    (128, 32, 1000),
]
MEMORY_SHAPE = (256, 32, 1000)
KINDS = ("LSTM", "GRU")
MODES = ("train", "inference")
RESULTS = Path(__file__).parent / "results" / "rnn_speed.md"
README = Path(__file__).parent.parent / "README.md"
#: README.md holds a copy of the results file between these markers, rewritten by every full run.
MARKERS = ("<!-- rnn_speed.md: begin -->", "<!-- rnn_speed.md: end -->")
ONEDNN_OFF = "torch.nn, oneDNN off"
MEMORY_TARGET = 1.30


def target(mode: str, hidden: int, batch: int) -> float:
    """The issue's target ratio for a layer-norm module: tighter where the matrix products dominate."""
    if hidden >= 128 and batch >= 8:
        return 1.10 if mode == "train" else 1.15
    return 1.30


#: The layer-norm setting of the grid and the memory table (the default variant; the tables name it).
GRID_LN: bool | str = True
LN_NAME = f"layer_norm={GRID_LN!r}"


def _options(name: str) -> dict[str, Any]:
    """Constructor options of one row's module: `layer_norm=<value>` and `+ residual` parsed from its name."""
    options: dict[str, Any] = {}
    if name.startswith("layer_norm="):
        value = name.split(" + ")[0].split("=", 1)[1]
        options["layer_norm"] = True if value == "True" else value.strip("'")
    if name.endswith("residual"):
        options["residual"] = True
    return options


def _module(kind: str, name: str, hidden: int) -> nn.Module:
    torch_cls, ours = (nn.LSTM, LSTM) if kind == "LSTM" else (nn.GRU, GRU)
    args = (INPUT_SIZE, hidden, NUM_LAYERS)
    if name in ("torch.nn", ONEDNN_OFF):
        return torch_cls(*args)
    return ours(*args, **_options(name))


HEADLINE_NAMES = (
    "torch.nn",
    ONEDNN_OFF,
    "options off",
    "residual",
    "layer_norm=True",
    "layer_norm=True + residual",
    *(f"layer_norm={variant!r}" for variant in LAYER_NORM_VARIANTS),
)
GRID_NAMES = ("torch.nn", LN_NAME)


def _call(module: nn.Module, x: torch.Tensor, mode: str, onednn: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.backends.mkldnn.flags(enabled=onednn):
            if mode == "train":
                out, _ = module(x)
                out.sum().backward()
                module.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    module(x)

    return run


def measure(
    shape: tuple[int, int, int], names: tuple[str, ...], kinds: tuple[str, ...], mode: str, repeats: int
) -> dict[tuple[str, str], float]:
    """Median seconds per call of every module, all timed interleaved."""
    hidden, batch, steps = shape
    torch.manual_seed(0)
    x = torch.randn(steps, batch, INPUT_SIZE, requires_grad=mode == "train")
    runs = {
        (kind, name): _call(_module(kind, name, hidden), x, mode, onednn=name != ONEDNN_OFF)
        for kind in kinds
        for name in names
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for i in range(2 + repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= 2:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def _cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string: ratios differ between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mark(ratio: float, limit: float) -> str:
    return f"{ratio:.2f}× {'✓' if ratio <= limit else '✗'}"


def headline_table(
    results: dict[tuple[int, str], dict[tuple[str, str], float]], kinds: tuple[str, ...]
) -> str:
    """Every option at the headline shape: one row per module and option, one column per mode and thread count."""
    columns = sorted(results, key=lambda c: (MODES.index(c[1]), c[0]))
    header = " | ".join(f"{mode}, {threads} thr." for threads, mode in columns)
    lines = [f"| module | option | {header} |", "|---|---|" + "---:|" * len(columns)]
    for kind in kinds:
        for name in HEADLINE_NAMES:
            cells = []
            for column in columns:
                times = results[column]
                ratio = times[(kind, name)] / times[(kind, "torch.nn")]
                cell = f"{ratio:.2f}×"
                if name == "torch.nn":
                    cell = f"{1000 * times[(kind, name)]:.1f} ms"
                elif name.endswith("residual"):
                    base = "options off" if name == "residual" else name.split(" + ")[0]
                    cell += f" ({100 * (times[(kind, name)] / times[(kind, base)] - 1):+.1f} %)"
                cells.append(cell)
            lines.append(f"| {kind} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def grid_table(
    results: dict[tuple[tuple[int, int, int], str], dict[tuple[str, str], float]], kinds: tuple[str, ...]
) -> str:
    """Layer-norm module / torch's module per shape and mode, ✓ where the issue's target is met."""
    modes = [m for m in MODES if any(key[1] == m for key in results)]
    heads = [f"{kind} {mode} (target)" for kind in kinds for mode in modes]
    lines = ["| H, B, T | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for shape in GRID:
        cells = []
        for kind in kinds:
            for mode in modes:
                times = results[(shape, mode)]
                ratio = times[(kind, LN_NAME)] / times[(kind, "torch.nn")]
                limit = target(mode, shape[0], shape[1])
                cells.append(f"{_mark(ratio, limit)} (≤ {limit:.2f})")
        lines.append(f"| {shape[0]}, {shape[1]}, {shape[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_MEMORY_CHILD = """
import json, resource, sys, torch
from rnn_stability.nn import GRU, LSTM
torch.set_num_threads(1)
kind, name, hidden, batch, steps, inputs = json.loads(sys.argv[1])
cls = {("LSTM", True): LSTM, ("GRU", True): GRU, ("LSTM", False): torch.nn.LSTM, ("GRU", False): torch.nn.GRU}
ours = name != "torch.nn"
module = cls[(kind, ours)](inputs, hidden, 2, **({"layer_norm": name} if ours else {}))
small = torch.randn(3, 2, inputs, requires_grad=True)
module(small)[0].sum().backward()  # loads the kernel and the allocator's first pages
module.zero_grad(set_to_none=True)
x = torch.randn(steps, batch, inputs, requires_grad=True)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
out, _ = module(x)
out.sum().backward()
# VmHWM, not ru_maxrss: the latter survives exec and starts at the forking parent's peak.
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024
print(json.dumps((peak - before) / 2**20))
"""


def peak_memory_mb(kind: str, name: bool | str, shape: tuple[int, int, int], runs: int = 2) -> float:
    """Peak memory of one training forward + backward above what the process held before it, in MiB.

    The least of `runs` fresh processes (peak: the child's `VmHWM`, Linux): on a shared machine, memory
    pressure from other jobs can evict pages of the process before the measured call and inflate its apparent
    peak, never shrink it.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    arg = json.dumps([kind, name, *shape, INPUT_SIZE])
    peaks = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, arg], env=env, capture_output=True, text=True, check=True
        )
        peaks.append(float(result.stdout.strip().splitlines()[-1]))
    return min(peaks)


def memory_table(kinds: tuple[str, ...]) -> str:
    hidden, batch, steps = MEMORY_SHAPE
    lines = [
        f"| module | torch.nn (MiB) | {LN_NAME} (MiB) | ratio (target ≤ 1.30×) |",
        "|---|---:|---:|---:|",
    ]
    for kind in kinds:
        base = peak_memory_mb(kind, "torch.nn", MEMORY_SHAPE)
        ours = peak_memory_mb(kind, GRID_LN, MEMORY_SHAPE)
        lines.append(f"| {kind} | {base:.0f} | {ours:.0f} | {_mark(ours / base, MEMORY_TARGET)} |")
    return "\n".join(lines) + "\n"


def update_readme(text: str, readme: Path = README) -> None:
    """Replace what README.md holds between `MARKERS` by `text` (the results file); no markers, no change."""
    content = readme.read_text()
    begin, end = MARKERS
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        readme.write_text(f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per module (median reported)")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both", help="what to time")
    parser.add_argument("--only", choices=KINDS, type=str.upper, help="time one module kind, write no file")
    parser.add_argument("--quick", action="store_true", help="headline shape only, no memory; write no file")
    args = parser.parse_args()
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be a positive int, got {args.repeats}")
    # Toggling oneDNN for the context row makes torch mention TF32 on Intel GPUs, irrelevant here.
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    kinds = KINDS if args.only is None else (args.only,)
    modes = MODES if args.mode == "both" else (args.mode,)
    headline: dict[tuple[int, str], dict[tuple[str, str], float]] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for mode in modes:
            headline[(threads, mode)] = measure(HEADLINE, HEADLINE_NAMES, kinds, mode, args.repeats)
    torch.set_num_threads(1)
    hidden, batch, steps = HEADLINE
    parts = [
        f"CPU ({_cpu_model()}), torch {torch.__version__}; input {INPUT_SIZE}, {NUM_LAYERS} layers; ratio of "
        f"the median of {args.repeats} timed calls to torch's module's, interleaved in the same run (✓: within "
        "the target).",
        "",
        f"Every option at T={steps}, B={batch}, H={hidden} (torch.nn: its time; residual rows: change against "
        f"the same module without it; `layer_norm=True` is {DEFAULT_LAYER_NORM!r}):",
        "",
        headline_table(headline, kinds),
    ]
    if not args.quick:
        grid = {
            (shape, mode): measure(shape, GRID_NAMES, kinds, mode, args.repeats)
            for shape in GRID
            for mode in modes
        }
        parts += [
            f"Layer-norm modules (`{LN_NAME}`, i.e. {DEFAULT_LAYER_NORM!r}) over shapes, 1 thread; "
            "train = forward + backward, "
            "inference = forward under `torch.no_grad()`:",
            "",
            grid_table(grid, kinds),
            f"Peak memory of one training forward + backward, T={MEMORY_SHAPE[2]}, B={MEMORY_SHAPE[1]}, "
            f"H={MEMORY_SHAPE[0]}, 1 thread:",
            "",
            memory_table(kinds),
        ]
    text = "\n".join(parts)
    print(text)
    if args.only is None and not args.quick and args.mode == "both":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        update_readme(text)


if __name__ == "__main__":
    main()
