"""Evidence for issue 13: under bad batches and a learning rate ×10, a run dies without `LossSpikeRecovery`
and finishes with it.

Task: the stability suite's sequential 8×8 digits (`benchmarks/stability/tasks.py`: scikit-learn's digits fed
pixel by pixel, T = 64; a torch `nn.LSTM` with 64 units and a linear head, Adam, batch 32; metric: validation
accuracy, chance 0.1). Condition: the suite's stress condition (`benchmarks/stability/conditions.py`): Adam at
10× the task's learning rate, and every 50 steps from step 25 a bad batch, alternately a loss ×1000 and a NaN
loss. Runs per seed, all from the same initial weights and the same batches:

- `reference`: the same learning rate, no bad batches, no recovery (what the run reaches undisturbed);
- `no recovery`: stress, nothing else;
- `skip`: stress + `LossSpikeRecovery(action="skip")` (defaults);
- `rollback`: stress + `LossSpikeRecovery(action="rollback", snapshot_every_n_steps=10, max_rollbacks=20)`.
  With the defaults (a snapshot every 100 good steps, 5 rollbacks) a bad batch every 50 steps would send the
  run back to its first snapshot each time and the sixth would give up with the documented `RuntimeError`:
  rollback is for a model that has drifted, skip for bad batches (see docs/guide/spike-recovery.md).

Writes `benchmarks/results/spike_recovery.md` (counts and final accuracy) and `spike_recovery.png` (training
loss curves), and copies the plot to `docs/img/`. About a minute per seed on one CPU thread.

Run from the repository root::

    .venv/bin/python -m benchmarks.spike_recovery
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks.stability.conditions import CONDITIONS, corrupt_kind, inject_corrupt_batches
from benchmarks.stability.tasks import TASKS, build_task
from rnn_stability.callbacks import LossSpikeRecovery
from rnn_stability.demo.recording import LossRecorder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS_IMG = ROOT / "docs" / "img"
TASK = "seq_digits"
STRESS = CONDITIONS["stress"]


@dataclass(frozen=True)
class Arm:
    """One way of running the task."""

    name: str
    bad_batches: bool
    recovery: dict[str, Any] | None = None  # LossSpikeRecovery arguments, or None for no callback
    colour: str = "black"


ARMS = (
    Arm("reference", bad_batches=False, colour="0.5"),
    Arm("no recovery", bad_batches=True, colour="tab:red"),
    Arm("skip", bad_batches=True, recovery={"action": "skip"}, colour="tab:blue"),
    Arm(
        "rollback",
        bad_batches=True,
        recovery={"action": "rollback", "snapshot_every_n_steps": 10, "max_rollbacks": 20},
        colour="tab:green",
    ),
)


@dataclass
class Outcome:
    """What one run did."""

    arm: Arm
    seed: int
    losses: list[float] = field(default_factory=list)
    final_accuracy: float = math.nan
    steps: int = 0
    bad_batches: int = 0
    spikes: int | None = None
    skipped: int | None = None
    rollbacks: int | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def first_nan_step(self) -> int | None:
        """The first step with a non-finite loss that was not a NaN batch on purpose (the run is dead)."""
        for step, loss in enumerate(self.losses):
            if not math.isfinite(loss) and not (self.arm.bad_batches and corrupt_kind(step) == "nan"):
                return step
        return None

    @property
    def result(self) -> str:
        if self.error is not None:
            return f"stopped at step {self.steps}: {self.error}"
        nan_step = self.first_nan_step
        if nan_step is not None:
            return f"diverged: loss NaN from step {nan_step}, weights NaN"
        return f"finished {self.steps} steps"


def train(arm: Arm, seed: int, steps: int) -> Outcome:
    """Train one arm for `steps` optimizer steps and record its per-step training loss and counters."""
    L.seed_everything(seed, verbose=False)
    task = TASKS[TASK]
    built = build_task(TASK, "lstm", "torch", False, task.lr * STRESS.lr_factor, seed)
    if arm.bad_batches:
        inject_corrupt_batches(built.model)
    recorder = LossRecorder(interval_s=math.inf)
    recovery = None if arm.recovery is None else LossSpikeRecovery(**arm.recovery)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[cb for cb in (recovery, recorder) if cb is not None],
    )
    outcome = Outcome(arm, seed)
    start = time.perf_counter()
    try:
        trainer.fit(built.model, datamodule=built.data)
    except RuntimeError as error:
        outcome.error = str(error).split(":")[0].split(".")[0]
    outcome.seconds = time.perf_counter() - start
    outcome.losses = list(recorder.losses)
    outcome.steps = trainer.global_step
    weights_finite = all(bool(torch.isfinite(p).all()) for p in built.model.parameters())
    outcome.final_accuracy = built.evaluate() if weights_finite else math.nan  # NaN logits argmax to class 0
    outcome.bad_batches = sum(1 for s in range(outcome.steps) if arm.bad_batches and corrupt_kind(s))
    if recovery is not None:
        outcome.spikes = recovery.num_spikes
        outcome.skipped = recovery.num_skipped_steps
        outcome.rollbacks = recovery.num_rollbacks
    return outcome


def table(outcomes: list[Outcome], steps: int, minutes: float) -> str:
    task = TASKS[TASK]

    def count(value: int | None) -> str:
        return "–" if value is None else str(value)

    lines = [
        f"{task.title}, torch `nn.LSTM` {task.hidden_size} units, Adam, batch {task.batch_size}, {steps} steps,"
        f" CPU, 1 thread, torch {torch.__version__}, lightning {L.__version__} ({minutes:.1f} min in all)."
        f" Stress: learning rate {STRESS.lr_factor:g} × {task.lr:g} and a bad batch every 50 steps from step 25"
        " (loss ×1000 and NaN, alternately). Accuracy on the held-out digits after the last step (chance 0.1;"
        " `nan`: the weights are NaN).",
        "",
        "| seed | run | bad batches | spikes flagged | steps skipped | rollbacks | result | final val accuracy |",
        "|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for o in outcomes:
        accuracy = f"{o.final_accuracy:.3f}" if math.isfinite(o.final_accuracy) else "nan"
        lines.append(
            f"| {o.seed} | {o.arm.name} | {o.bad_batches} | {count(o.spikes)} | {count(o.skipped)}"
            f" | {count(o.rollbacks)} | {o.result} | {accuracy} |"
        )
    return "\n".join(lines) + "\n"


def smoothed(losses: list[float], bad_batches: bool, window: int = 10) -> list[float]:
    """Trailing mean over `window` steps of the losses of the good batches (NaN once the run is dead)."""
    clean = [math.nan if bad_batches and corrupt_kind(s) else v for s, v in enumerate(losses)]
    out = []
    for step in range(len(clean)):
        recent = [v for v in clean[max(0, step - window + 1) : step + 1] if not math.isnan(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def plot(outcomes: list[Outcome], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        runs = [o for o in outcomes if o.seed == seed]
        for step in range(max(len(o.losses) for o in runs)):
            if corrupt_kind(step):
                ax.axvline(step, color="0.85", lw=0.8, zorder=0)
        for o in runs:
            curve = smoothed(o.losses, o.arm.bad_batches)
            ax.plot(range(len(curve)), curve, color=o.arm.colour, lw=1.2, label=o.arm.name)
            nan_step = o.first_nan_step
            if nan_step is not None:
                last = next(v for v in reversed(curve[:nan_step]) if math.isfinite(v))
                ax.plot([nan_step], [last], "x", color=o.arm.colour, ms=9, mew=2)
                ax.annotate("NaN from here", (nan_step, last), textcoords="offset points", xytext=(6, 8))
        ax.set_xlabel("optimizer step (grey: bad batches)")
        ax.set_title(f"seed {seed}")
    axes[0][0].set_ylabel("training loss, good batches (10-step mean)")
    axes[0][0].legend(loc="lower left")
    fig.suptitle("Sequential digits, LSTM, LR ×10 + bad batches")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=TASKS[TASK].steps, help="optimizer steps per run")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-docs-copy", action="store_true", help="do not copy the plot into docs/img")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    started = time.perf_counter()
    outcomes = []
    for seed in args.seeds:
        for arm in ARMS:
            outcome = train(arm, seed, args.steps)
            outcomes.append(outcome)
            print(
                f"seed {seed} {arm.name:<12} {outcome.result}, accuracy {outcome.final_accuracy:.3f}",
                flush=True,
            )
    markdown = table(outcomes, args.steps, (time.perf_counter() - started) / 60)
    print(markdown)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "spike_recovery.md").write_text(markdown)
    png = args.output_dir / "spike_recovery.png"
    plot(outcomes, args.seeds, png)
    if not args.no_docs_copy:
        shutil.copyfile(png, DOCS_IMG / "spike_recovery.png")


if __name__ == "__main__":
    main()
