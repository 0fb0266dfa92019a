"""Over-fitting experiment: validation bits per character of a character LM without and with each regulariser.

The corpus is the one the package ships with its char-LM example (`examples/char_lm/corpus.txt`, ~6.9k
characters; the last 15 % validates), far too small for an LSTM with 256 hidden units, which therefore
over-fits: its validation loss falls, then rises. The model is embedding (32) -> `rnn_stability.nn.LSTM`
(256 hidden, 1 layer) -> linear, trained with Adam (lr 3e-3, batch 32 windows of 64 characters, gradient norm
clipped at 1) for a fixed number of epochs, validated after each. Reported per configuration, mean over the
seeds: the best validation bits per character (and its epoch), and the last epoch's, whose gap to the best
measures the over-fitting. Configurations: no regularisation, each option alone, and the AWD-LSTM
combination (`weight_dropout` + `input_dropout`). Writes `benchmarks/results/overfitting.md`, `.json` and
`.png`, and copies the plot to `docs/img/`.

Usage:

    python benchmarks/overfitting.py [--epochs 30] [--seeds 0 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rnn_stability.nn import LSTM

__all__ = ["main"]

CORPUS = Path(__file__).parent.parent / "examples" / "char_lm" / "corpus.txt"
RESULTS = Path(__file__).parent / "results" / "overfitting"
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"
SEQ_LEN, BATCH, EMBED, HIDDEN, LR = 64, 32, 32, 256, 3e-3
CONFIGS: dict[str, dict[str, Any]] = {
    "none": {},
    "weight_dropout=0.5": {"weight_dropout": 0.5},
    "recurrent_dropout=0.25": {"recurrent_dropout": 0.25},
    "input_dropout=0.2": {"input_dropout": 0.2},
    "zoneout=0.1": {"zoneout": 0.1},
    "batch_norm": {"batch_norm": True},
    "AWD: weight_dropout=0.5 + input_dropout=0.2": {"weight_dropout": 0.5, "input_dropout": 0.2},
}


class CharModel(nn.Module):
    def __init__(self, vocab: int, **options: Any) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.lstm = LSTM(EMBED, HIDDEN, batch_first=True, **options)
        self.head = nn.Linear(HIDDEN, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(ids))[0])


def _data() -> tuple[int, torch.Tensor, torch.Tensor]:
    text = CORPUS.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    ids = torch.tensor([alphabet.index(ch) for ch in text], dtype=torch.int64)
    split = int(len(ids) * 0.85)
    train = ids[:split].unfold(0, SEQ_LEN + 1, SEQ_LEN // 4)
    val = ids[split:].unfold(0, SEQ_LEN + 1, SEQ_LEN)
    return len(alphabet), train, val


def _bpc(model: nn.Module, windows: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    model.train()
    return float(loss) / math.log(2)


def train_one(name: str, seed: int, epochs: int) -> dict[str, Any]:
    """Train one configuration with one seed; validation bits per character after every epoch."""
    torch.set_num_threads(1)
    vocab, train, val = _data()
    torch.manual_seed(seed)
    model = CharModel(vocab, **CONFIGS[name])
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    curve, start = [], time.perf_counter()
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train))].split(BATCH):
            loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        curve.append(_bpc(model, val))
    return {"name": name, "seed": seed, "curve": curve, "seconds": time.perf_counter() - start}


def _table(runs: list[dict[str, Any]], epochs: int, seeds: list[int]) -> str:
    lines = [
        f"Character LM on the shipped corpus (`examples/char_lm/corpus.txt`), LSTM {HIDDEN} hidden, {epochs} "
        f"epochs, seeds {seeds}; validation bits per character, mean (± half the spread) over the seeds.",
        "",
        "| configuration | best val bpc | best epoch | last val bpc | last − best |",
        "|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        curves = [r["curve"] for r in runs if r["name"] == name]
        best = [min(c) for c in curves]
        last = [c[-1] for c in curves]
        epoch = [c.index(min(c)) + 1 for c in curves]

        def fmt(values: list[float]) -> str:
            mean = sum(values) / len(values)
            return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"

        gap = [la - b for la, b in zip(last, best, strict=True)]
        lines.append(
            f"| {name} | {fmt(best)} | {sum(epoch) / len(epoch):.0f} | {fmt(last)} | {sum(gap) / len(gap):.3f} |"
        )
    return "\n".join(lines)


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in CONFIGS:
        curves = torch.tensor([r["curve"] for r in runs if r["name"] == name])
        mean = curves.mean(0)
        line = ax.plot(range(1, len(mean) + 1), mean, label=name)[0]
        ax.fill_between(
            range(1, len(mean) + 1),
            curves.min(0).values,
            curves.max(0).values,
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation bits per character")
    ax.set_title(f"Char LM, LSTM {HIDDEN}: over-fitting with and without regularisation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    jobs = [(name, seed, args.epochs) for seed in args.seeds for name in CONFIGS]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(train_one, *zip(*jobs, strict=True)))
    table = _table(runs, args.epochs, args.seeds)
    print(table)
    RESULTS.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    RESULTS.with_suffix(".json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    _plot(runs, RESULTS.with_suffix(".png"))
    shutil.copyfile(RESULTS.with_suffix(".png"), DOCS_IMG / "overfitting.png")


if __name__ == "__main__":
    main()
