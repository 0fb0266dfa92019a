"""Steps to solve the adding problem with torch's default initialisation vs gate-aware initialisation.

Adding problem (Hochreiter & Schmidhuber 1997), one recurrent layer + linear head on the last step, Adam 1e-3,
batch 50, gradient clipping at norm 1.0. Schemes: ``default`` (torch's own ``reset_parameters``),
``orthogonal`` (``init_rnn_(scheme="orthogonal")``: per-gate orthogonal recurrent weights, Glorot input weights,
LSTM forget bias 1) and ``chrono`` (same weights, chrono biases with ``max_timescale = T``). Every run of one
seed sees the same training batches and the same head initialisation. The MSE on a fixed held-out batch is
evaluated every ``--eval-every`` steps; a run stops when it drops below ``--threshold`` ("solved") or at
``--max-steps``. Results are written after every run to ``benchmarks/results/adding_problem_init.{md,json,png}`` (the markdown
has no title of its own: the docs include it under theirs); ``--merge`` rewrites them from the JSON without
training.

Run (CPU, single thread; about 0.1-0.25 s per step)::

    nice python benchmarks/adding_problem_init.py --cells lstm --seq-len 100 --max-steps 2500

On a shared machine, one process per run (``--cells lstm --seeds 0 --schemes chrono --output lstm_chrono_0
--results-dir /tmp/runs``) and a final ``--merge /tmp/runs/*.json`` gets the most out of the spare cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnn_stability.data import adding_problem
from rnn_stability.functional import init_rnn_

RESULTS = Path(__file__).parent / "results"
SCHEMES = ("chrono", "orthogonal", "default")  # run order within a seed: most informative first
MILESTONE = 0.1  # below the 1/6 of predicting the mean: the model has started to use the markers
CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


def build(cell: str, scheme: str, seq_len: int, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # torch default init and the head: identical across schemes for one seed
    rnn = CELLS[cell](2, hidden, batch_first=True)
    head = nn.Linear(hidden, 1)
    if scheme != "default":
        options: dict[str, Any] = {"max_timescale": seq_len} if scheme == "chrono" else {}
        init_rnn_(rnn, scheme, generator=torch.Generator().manual_seed(seed), **options)
    return nn.ModuleDict({"rnn": rnn, "head": head})


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out, _ = model["rnn"](x)
    return model["head"](out[:, -1])


def run(cell: str, scheme: str, seed: int, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    model = build(cell, scheme, args.seq_len, args.hidden, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(1000 + seed)
    x_val, y_val = adding_problem(args.val_size, args.seq_len, generator=torch.Generator().manual_seed(12345))
    curve: list[tuple[int, float]] = []
    solved_at = None
    start = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        x, y = adding_problem(args.batch_size, args.seq_len, generator=data)
        loss = nn.functional.mse_loss(predict(model, x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.max_steps:
            with torch.no_grad():
                mse = nn.functional.mse_loss(predict(model, x_val), y_val).item()
            curve.append((step, mse))
            print(
                f"{cell} T={args.seq_len} {scheme:<10} seed {seed} step {step:5d} val_mse {mse:.5f}",
                flush=True,
            )
            if mse < args.threshold:
                solved_at = step
                break
            if time.time() > deadline:
                print("deadline reached, stopping this run", flush=True)
                break
    return {
        "cell": cell,
        "seq_len": args.seq_len,
        "scheme": scheme,
        "seed": seed,
        "solved_at": solved_at,
        "steps_run": curve[-1][0] if curve else 0,
        "final_mse": curve[-1][1] if curve else float("nan"),
        "seconds": time.perf_counter() - start,
        "curve": curve,
    }


def group_order(key: tuple[str, int]) -> tuple[bool, int]:
    """LSTM before GRU, longer sequences first."""
    return key[0] != "lstm", -key[1]


def first_below(record: dict[str, Any], level: float) -> str:
    step = next((step for step, mse in record["curve"] if mse < level), None)
    return str(step) if step is not None else f"> {record['steps_run']}"


def steps_cell(record: dict[str, Any]) -> str:
    return str(record["solved_at"]) if record["solved_at"] is not None else f"> {record['steps_run']}"


def table(records: list[dict[str, Any]], threshold: float) -> str:
    """Markdown table: steps to solve per seed, mean, and the ratio to torch's default init of the same cell."""
    lines = [
        f"| cell | T | scheme | steps to val MSE < {MILESTONE} | steps to val MSE < {threshold} (solved) "
        "| final val MSE | ratio vs default (solved) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        groups.setdefault((record["cell"], record["seq_len"]), {}).setdefault(record["scheme"], []).append(
            record
        )
    for cell, seq_len in sorted(groups, key=group_order):
        by_scheme = groups[cell, seq_len]

        def cost(runs: list[dict[str, Any]]) -> tuple[float, bool]:
            # unsolved runs count as their step cap: a lower bound on the true cost
            return sum(r["solved_at"] or r["steps_run"] for r in runs) / len(runs), all(
                r["solved_at"] for r in runs
            )

        base, base_solved = (
            cost(by_scheme.get("default", [])) if "default" in by_scheme else (float("nan"), True)
        )
        for scheme in ("default", "orthogonal", "chrono"):
            runs = sorted(by_scheme.get(scheme, []), key=lambda r: r["seed"])
            if not runs:
                continue
            mean, solved = cost(runs)
            # an unsolved run counts as its cap: against an unsolved default the ratio is an upper bound
            bound = {(True, True): "", (True, False): "≤ ", (False, True): "≥ ", (False, False): "n/a "}
            ratio_text = f"{bound[solved, base_solved]}{mean / base:.2f}×"
            if scheme == "default":
                ratio_text = "1.00× (baseline)"
            elif not solved and not base_solved:
                ratio_text = "n/a (both unsolved)"
            lines.append(
                f"| {cell.upper()} | {seq_len} | {scheme} | {' / '.join(first_below(r, MILESTONE) for r in runs)} | "
                f"{' / '.join(steps_cell(r) for r in runs)} | "
                f"{' / '.join(format(r['final_mse'], '.4f') for r in runs)} | {ratio_text} |"
            )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["cell"], r["seq_len"]) for r in records}, key=group_order)
    # two panels a row, so that the figure stays readable in a docs column (~800 px)
    ncols = min(2, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    colors = {"default": "tab:gray", "orthogonal": "tab:blue", "chrono": "tab:orange"}
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, (cell, seq_len) in zip(axes.flat, keys, strict=False):
        for r in records:
            if (r["cell"], r["seq_len"]) != (cell, seq_len) or not r["curve"]:
                continue
            steps, mse = zip(*r["curve"], strict=True)
            style = "-" if r["seed"] == 0 else "--"
            ax.plot(steps, mse, style, color=colors[r["scheme"]], label=f"{r['scheme']} (seed {r['seed']})")
        ax.axhline(threshold, color="k", lw=0.8, ls=":")
        ax.axhline(1 / 6, color="tab:red", lw=0.8, ls=":", label="predict-the-mean (1/6)")
        ax.set(
            yscale="log",
            xlabel="training step",
            ylabel="held-out MSE",
            title=f"{cell.upper()}, adding T={seq_len}",
        )
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(keys) < axes.size:  # the spare panel holds the legend
        axes.flat[-1].legend(handles, labels, loc="center", fontsize=9, frameon=False)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0 if len(keys) < axes.size else 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.output}.json").write_text(json.dumps(records, indent=1))
    text = table(records, args.threshold)
    cap = "step caps as listed below" if args.merge else f"cap {args.max_steps} steps"
    header = (
        f"`python benchmarks/adding_problem_init.py` — hidden {args.hidden}, Adam 1e-3, batch {args.batch_size}, "
        f"clip 1.0, val MSE on {args.val_size} held-out sequences every {args.eval_every} steps, {cap} "
        '("> N": not reached after N steps; unsolved runs count as N, so the ratios against an unsolved '
        "default are upper bounds). Per-seed values are separated by `/`. CPU, 1 thread per run.\n\n"
    )
    note = f"\n\n{args.note}" if args.note else ""
    (out / f"{args.output}.md").write_text(header + text + note + "\n")
    plot(records, out / f"{args.output}.png", args.threshold)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=sorted(CELLS))
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    parser.add_argument("--max-steps", type=int, default=2500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop all runs after this")
    parser.add_argument("--output", default="adding_problem_init", help="file stem of the results")
    parser.add_argument("--note", default="", help="markdown paragraph added below the table")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of the results")
    parser.add_argument("--merge", nargs="+", type=Path, default=[], help="only report these records (json)")
    args = parser.parse_args()
    if args.merge:
        print(write([r for path in args.merge for r in json.loads(path.read_text())], args))
        return
    torch.set_num_threads(1)
    deadline = time.time() + args.max_minutes * 60
    records: list[dict[str, Any]] = []
    for cell in args.cells:
        for seed in args.seeds:
            for scheme in args.schemes:
                if time.time() > deadline:
                    break
                records.append(run(cell, scheme, seed, args, deadline))
                write(records, args)
    print(write(records, args))


if __name__ == "__main__":
    main()
