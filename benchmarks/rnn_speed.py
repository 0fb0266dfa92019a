"""Speed of ``rnn_stability.nn.LSTM`` / ``GRU`` against ``torch.nn.LSTM`` / ``GRU`` (CPU, fwd + bwd).

Every variant is timed in the same run, interleaved (one forward + backward of each in turn, repeated), and the
median is reported with its ratio to torch's module. The table is printed and written to
``benchmarks/results/rnn_speed.md``.

Usage::

    python benchmarks/rnn_speed.py [--repeats 7] [--threads 1] [--only LSTM]

``--only`` times one module kind (a quick check while tuning); only a full run writes the results file.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM

__all__ = ["main"]

SEQ_LEN, BATCH, INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS = 100, 32, 64, 256, 2
TARGETS = {
    ("LSTM", "options off"): 1.02,
    ("GRU", "options off"): 1.02,
    ("LSTM", "layer_norm"): 1.25,
    ("GRU", "layer_norm"): 1.10,
}
KINDS = ("LSTM", "GRU")
RESULTS = Path(__file__).parent / "results" / "rnn_speed.md"


ONEDNN_OFF = "torch.nn, oneDNN off"


def _variants(kind: str) -> dict[str, nn.Module]:
    torch_cls, ours = (nn.LSTM, LSTM) if kind == "LSTM" else (nn.GRU, GRU)
    args = (INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS)
    baseline = torch_cls(*args)
    return {
        "torch.nn": baseline,
        # torch's composite CPU kernel (what it runs when oneDNN is unavailable), for context: on CPU torch's
        # LSTM uses a fused oneDNN kernel, its GRU does not.
        ONEDNN_OFF: baseline,
        "options off": ours(*args),
        "residual": ours(*args, residual=True),
        "layer_norm": ours(*args, layer_norm=True),
        "layer_norm + residual": ours(*args, layer_norm=True, residual=True),
    }


def _step(module: nn.Module, x: torch.Tensor, onednn: bool = True) -> Callable[[], None]:
    def run() -> None:
        with torch.backends.mkldnn.flags(enabled=onednn):
            out, _ = module(x)
            out.sum().backward()
        module.zero_grad(set_to_none=True)

    return run


def measure(repeats: int, warmup: int = 2, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, str, float]]:
    """Median seconds per forward + backward of every variant of ``kinds``, measured interleaved."""
    torch.manual_seed(0)
    x = torch.randn(SEQ_LEN, BATCH, INPUT_SIZE, requires_grad=True)
    runs = {
        (kind, name): _step(m, x, onednn=name != ONEDNN_OFF)
        for kind in kinds
        for name, m in _variants(kind).items()
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for i in range(warmup + repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return [(kind, name, statistics.median(t)) for (kind, name), t in times.items()]


def _cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string: ratios differ between CPUs, since
    torch's fused kernel (oneDNN) gains more from some instruction sets than our loops do."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: list[tuple[str, str, float]]) -> str:
    """Markdown table of the medians, ratios to torch and targets."""
    base = {kind: t for kind, name, t in results if name == "torch.nn"}
    by_key = {(kind, name): t for kind, name, t in results}
    lines = [
        f"CPU ({_cpu_model()}), {torch.get_num_threads()} thread(s), forward + backward, T={SEQ_LEN}, B={BATCH}, "
        f"input={INPUT_SIZE}, hidden={HIDDEN_SIZE}, {NUM_LAYERS} layers, torch {torch.__version__}; "
        "median of interleaved repeats.",
        "",
        "| module | mode | time (ms) | ratio to torch.nn | target |",
        "|---|---|---:|---:|---:|",
    ]
    for kind, name, t in results:
        target = TARGETS.get((kind, name))
        note = f"≤ {target:.2f}×" if target else ""
        if name.endswith("residual") and name != "residual":
            note = f"{100 * (t / by_key[(kind, 'layer_norm')] - 1):+.1f} % vs layer_norm (≤ +3 %)"
        elif name == "residual":
            note = f"{100 * (t / by_key[(kind, 'options off')] - 1):+.1f} % vs options off (≤ +3 %)"
        lines.append(f"| {kind} | {name} | {1000 * t:.1f} | {t / base[kind]:.3f}× | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per variant (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--only", choices=KINDS, type=str.upper, help="time one module kind, write no file")
    args = parser.parse_args()
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be a positive int, got {args.repeats}")
    torch.set_num_threads(args.threads)
    # Toggling oneDNN for the context row makes torch mention TF32 on Intel GPUs, irrelevant here.
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    text = table(measure(args.repeats, kinds=KINDS if args.only is None else (args.only,)))
    print(text)
    if args.only is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
