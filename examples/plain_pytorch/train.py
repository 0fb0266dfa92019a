"""The functional API in a plain PyTorch loop (no Lightning): init, adaptive clipping, gradient flow.

Trains an LSTM on the adding problem with

* `rnn_stability.functional.init_rnn_` — chrono initialisation (Tallec & Ollivier 2018),
* `rnn_stability.functional.PercentileClipper` + `clip_grads_with_norm_` — AutoClip (Seetharaman et al.
  2020), sync-free,
* `rnn_stability.functional.gradient_flow` + `flow_statistics` — how far back in time the gradient reaches.

Run from the repository root (after `make test` or `make demo`):

    .venv/bin/python examples/plain_pytorch/train.py --steps 600
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from rnn_stability.data import adding_problem
from rnn_stability.functional import (
    PercentileClipper,
    clip_grads_with_norm_,
    flow_statistics,
    gradient_flow,
    init_rnn_,
    nonfinite_count,
    total_grad_norm,
)
from rnn_stability.nn import LSTM

__all__ = ["Regressor", "main"]


class Regressor(nn.Module):
    """LSTM with layer norm and a linear read-out of the last hidden state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.rnn = LSTM(2, hidden_size, batch_first=True, layer_norm=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _at_least(flag: str, kind: type, low: float) -> Callable[[str], Any]:
    """argparse type: a `kind` number >= `low` (> 0 for floats), with a message naming `flag`."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a {kind.__name__}, got {text!r}") from None
        if value < low or (kind is float and value <= low):
            bound = f"> {low}" if kind is float else f">= {low}"
            raise argparse.ArgumentTypeError(f"{flag} must be {bound}, got {text}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Trains and prints progress; returns the final training MSE, memory length and clipped-step count."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    options = (
        ("--seq-len", int, 100, 2, "sequence length T of the adding problem"),
        ("--hidden-size", int, 64, 1, "hidden width of the LSTM"),
        ("--batch-size", int, 50, 1, "sequences per step"),
        ("--steps", int, 600, 1, "optimizer steps"),
        ("--lr", float, 3e-3, 0, "Adam learning rate (> 0)"),
        ("--log-every", int, 50, 1, "print a line, with a gradient-flow measurement, every this many steps"),
        ("--seed", int, 0, 0, "seed of data, initialisation and model"),
    )
    for flag, kind, default, low, help_text in options:
        parser.add_argument(flag, type=_at_least(flag, kind, low), default=default, help=help_text)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    model = Regressor(args.hidden_size)
    init_rnn_(
        model.rnn, "chrono", max_timescale=args.seq_len, generator=torch.Generator().manual_seed(args.seed)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    clipper = PercentileClipper(percentile=10.0, window_size=1000)
    clipped = torch.zeros((), dtype=torch.int64)  # counted on device: no host sync per step

    loss = torch.zeros(())
    memory = float("nan")
    for step in range(1, args.steps + 1):
        x, y = adding_problem(args.batch_size, args.seq_len, generator=data)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = total_grad_norm(model.parameters())
        threshold = clipper.step(norm)
        clip_grads_with_norm_(model.parameters(), threshold, norm)
        clipped += (norm > threshold).long()
        if nonfinite_count(model.parameters()) == 0:  # a host sync, acceptable in a CPU example
            optimizer.step()
        if step % args.log_every == 0 or step == args.steps:
            # ‖∂L/∂x_t‖ for every t: does the loss still "see" the first time steps?
            profile = gradient_flow(model, x, partial(nn.functional.mse_loss, target=y))
            stats = flow_statistics(profile)
            memory = float(stats.memory_length)
            print(
                f"step {step:5d}  mse {loss.item():.4f}  grad norm {norm.item():8.3f}  "
                f"clip at {threshold.item():7.3f}  memory {stats.memory_length:3d}/{args.seq_len} ({stats.verdict})"
            )
    return {"mse": loss.item(), "memory_length": memory, "clipped_steps": float(clipped.item())}


if __name__ == "__main__":
    main()
