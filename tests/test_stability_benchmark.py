"""Smoke test of the stability suite (`benchmarks/stability`): a tiny grid, resumed, and its report."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.stability.conditions import corrupt_kind
from benchmarks.stability.report import write_report
from benchmarks.stability.suite import Grid, pending_runs, run_grid
from benchmarks.stability.tasks import TASKS
from benchmarks.stability.train import RunSpec, downsample, train_run


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_builds_trains_and_scores(task):
    if task.endswith("digits"):
        pytest.importorskip("sklearn")
    result = train_run(RunSpec(task, "lstm", "full", "normal", seed=0, steps=2))
    assert result["steps"] == 2 and result["error"] is None
    assert math.isfinite(result["final_metric"]) and math.isfinite(result["threshold"])
    steps = [step for step, _ in result["evaluations"]]
    assert steps[0] == 0 and steps[-1] == 2


def test_stress_kills_plain_training_and_the_guard_survives_it():
    # step 25 is an outlier batch (loss x 1000), step 75 a NaN batch
    assert [corrupt_kind(s) for s in (25, 75)] == ["spike", "nan"]
    plain = train_run(RunSpec("sunspots", "gru", "torch", "stress", seed=0, steps=80))
    guarded = train_run(RunSpec("sunspots", "gru", "autoclip", "stress", seed=0, steps=80))
    assert plain["nan"] and not plain["success"] and plain["final_metric"] is None
    assert not guarded["nan"] and guarded["final_metric"] is not None
    # the curve leaves out only the two injected steps: the guard kept every other loss finite
    assert [i for i, v in enumerate(guarded["loss_curve"]) if v is None] == [25, 75]


def test_grid_is_resumable_and_reported(tmp_path, monkeypatch):
    grid = Grid(
        tasks=("sunspots",),
        cells=("lstm",),
        recipes=("torch", "lightning_clip"),
        conditions=("normal",),
        seeds=(0,),
        step_scale=0.05,
        size="smoke",
    )
    path = tmp_path / "results.json"
    results = run_grid(grid, path, jobs=1)
    assert len(results["runs"]) == 2 and not pending_runs(grid, json.loads(path.read_text()))

    def no_training(spec):
        raise AssertionError(f"{spec} was already done")

    monkeypatch.setattr("benchmarks.stability.suite.train_run", no_training)
    again = run_grid(grid, path, jobs=1)  # nothing left to do: the runs are kept, not repeated
    assert again["runs"] == results["runs"]
    pytest.importorskip("matplotlib")
    written = write_report(results, tmp_path / "report", planned=4)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "2 runs of the 4 planned" in summary and "| 1 torch defaults, no clipping |" in summary
    assert "### sunspots" in (tmp_path / "report" / "tasks.md").read_text()
    assert all(p.is_file() for p in written)


def test_run_grid_refuses_a_results_file_of_another_size(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"size": "default", "settings": {}, "runs": {}}))
    with pytest.raises(SystemExit, match="--fresh"):
        run_grid(Grid(tasks=("sunspots",), size="quick"), path, jobs=1)


def test_downsample_keeps_gaps_of_non_finite_losses():
    assert downsample([1.0, 2.0, 3.0, math.inf], points=2) == [1.5, 3.0]
    assert downsample([math.nan] * 4, points=2) == [None, None]
