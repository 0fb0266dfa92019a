"""An exploding recurrence, as the gradient-flow tools show it: the pictures of the diagnosing page.

A tanh `torch.nn.RNN` (hidden 32) whose recurrent weight is scaled by 3 after torch's initialisation
(spectral radius ≈ 1.7 instead of ≈ 0.6) on the adding problem with T = 100: its Jacobians amplify the
gradient at every step back. (An LSTM with the same scaling does not explode: its saturated gates cut the
recurrent path.) The script measures the profile ‖∂L/∂x_t‖ with `gradient_flow` before training, then
trains 200 steps with Adam 1e-3 and no clipping, measuring every 10 steps, and draws the pictures with the
library's own `plot_flow_profile` and `plot_flow_heatmap`. For contrast it also measures the same network
unscaled. CPU, about ten seconds.

Writes `docs/img/exploding_profile.png`, `docs/img/exploding_heatmap.png` and
`benchmarks/results/exploding_gradient_flow.md` (the numbers quoted on the page).

    .venv/bin/python benchmarks/exploding_gradient_flow.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from rnn_stability.callbacks import plot_flow_heatmap, plot_flow_profile
from rnn_stability.data import adding_problem
from rnn_stability.functional import FlowStatistics, flow_statistics, gradient_flow

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN, HIDDEN, BATCH, SCALE, STEPS, EVERY = 100, 32, 64, 3.0, 200, 10


def _model(scale: float) -> tuple[nn.RNN, nn.Linear]:
    torch.manual_seed(0)
    rnn, head = nn.RNN(2, HIDDEN, batch_first=True), nn.Linear(HIDDEN, 1)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(scale)
    return rnn, head


def _profile(rnn: nn.RNN, head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return gradient_flow(rnn, x, lambda out: nn.functional.mse_loss(head(out[0][:, -1]), y))


def _row(label: str, stats: FlowStatistics) -> str:
    growth = math.exp(-stats.decay_rate * (stats.seq_len - 1))
    return (
        f"| {label} | {stats.verdict} | {stats.decay_rate:.3f} | {growth:.3g}× | "
        f"{stats.memory_length} / {stats.seq_len} | {stats.max_norm:.3g} |"
    )


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x, y = adding_problem(BATCH, SEQ_LEN, generator=generator)
    plain = flow_statistics(_profile(*_model(1.0), x, y))
    rnn, head = _model(SCALE)
    profile = _profile(rnn, head, x, y)
    before = flow_statistics(profile)
    plot_flow_profile(
        profile,
        threshold=0.01,
        title=f"tanh RNN, W_hh × {SCALE:g}, untrained: memory {before.memory_length}/{SEQ_LEN}, {before.verdict}",
        path=ROOT / "docs" / "img" / "exploding_profile.png",
    )

    optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
    steps, history, losses = [], [], []
    for step in range(STEPS + 1):
        xb, yb = adding_problem(BATCH, SEQ_LEN, generator=generator)
        if step % EVERY == 0:
            steps.append(step)
            history.append(_profile(rnn, head, xb, yb))
        if step == STEPS:
            break
        loss = nn.functional.mse_loss(head(rnn(xb)[0][:, -1]), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = flow_statistics(history[-1])
    plot_flow_heatmap(
        steps,
        history,
        title=f"tanh RNN, W_hh × {SCALE:g}, Adam without clipping",
        path=ROOT / "docs" / "img" / "exploding_heatmap.png",
    )
    verdicts = [flow_statistics(p).verdict for p in history]

    lines = [
        "| network (adding problem, T = 100) | verdict | decay rate | growth over the sequence | memory length"
        " | max ‖∂L/∂x_t‖ |",
        "|---|---|---|---|---|---|",
        _row("tanh RNN, torch's initialisation", plain),
        _row(f"tanh RNN, W_hh × {SCALE:g}, untrained", before),
        _row(f"the same after {STEPS} Adam steps without clipping", after),
        "",
        f"Written by `python benchmarks/exploding_gradient_flow.py` (CPU, seed 0). Verdict of the {len(verdicts)}"
        f" measurements during training: {verdicts.count('exploding')} exploding, {verdicts.count('healthy')}"
        f" healthy, {verdicts.count('vanishing')} vanishing; training loss (MSE) {losses[0]:.3g} at the first step,"
        f" {max(losses):.3g} at its highest, {losses[-1]:.3g} at the last.",
    ]
    path = ROOT / "benchmarks" / "results" / "exploding_gradient_flow.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
