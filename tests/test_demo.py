"""The ``rnn-stability demo`` command: end to end with tiny settings, and its option validation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rnn_stability
from rnn_stability.__main__ import main
from rnn_stability.demo import MEAN_BASELINE_MSE, DemoConfig
from rnn_stability.demo.report import comparison_markdown
from rnn_stability.demo.worker import RunResult

TINY = ["--steps", "6", "--seq-len", "8", "--hidden-size", "8", "--batch-size", "8", "--seed", "3"]


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", *TINY, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    for expected in ("vanilla", "stable", "held-out MSE", "steps to solve", "clipped steps", "memory length"):
        assert expected in printed
    assert str(out.resolve()) in printed.replace("\n", "")
    for name in (
        "loss_curves",
        "grad_norms",
        "gradient_flow_vanilla",
        "gradient_flow_stable",
        "gradient_flow_profiles",
    ):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    runs = json.loads((out / "metrics.json").read_text())
    assert [run["name"] for run in runs] == ["vanilla", "stable"]
    for run in runs:
        assert run["steps"] == 6 and len(run["losses"]) == 6
        assert run["memory_length"] is not None and 0 <= run["memory_length"] <= 8
        assert run["flow_history"] and len(run["flow_history"][0][1]) == 8
    vanilla, stable = runs
    assert vanilla["clipped_steps"] is None and vanilla["skipped_steps"] is None
    assert 0 <= stable["clipped_steps"] <= 6 and stable["skipped_steps"] == 0
    assert any(key.startswith("grad_norm/") for key in stable["metrics"])
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| | vanilla | stable |")


def test_same_seed_same_vanilla_run(tmp_path):
    config = DemoConfig(seq_len=6, steps=3, hidden_size=4, batch_size=4, output_dir=tmp_path, seed=1)
    from rnn_stability.demo.worker import train_setup

    first, second = (train_setup("vanilla", config) for _ in range(2))
    assert first.losses == second.losses
    assert train_setup("vanilla", DemoConfig(**{**config.__dict__, "seed": 2})).losses != first.losses


def test_stable_gru_setup_trains_in_process(tmp_path):
    from rnn_stability.demo.worker import train_setup
    from rnn_stability.nn import GRU

    config = DemoConfig(seq_len=6, steps=3, hidden_size=4, batch_size=4, output_dir=tmp_path, cell="gru")
    seen = []
    result = train_setup("stable", config, on_progress=lambda step, mse: seen.append(step))
    assert result.steps == 3 and seen[-1] == 3
    assert result.title.startswith("rnn_stability.nn.GRU(layer_norm=True)")
    assert result.clipped_steps is not None and result.skipped_steps == 0
    assert result.memory_length is not None
    from rnn_stability.demo.setups import build_setup

    assert isinstance(build_setup("stable", config).model.rnn, GRU)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--steps", "0"], "--steps must be in [1, 1000000], got 0"),
        (["demo", "--seq-len", "ten"], "--seq-len must be an integer, got 'ten'"),
        (["demo", "--seq-len", "1"], "--seq-len must be in [2, 10000]"),
        (["demo", "--cell", "rnn"], "invalid choice: 'rnn'"),
        (["demo", "--lr", "-0.1"], "--lr must be in (0, 1]"),
        (["demo", "--seed", "-1"], "--seed must be in [0, 4294967295]"),
        (["demo", "--jobs", "3"], "invalid choice: 3"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["train"], "invalid choice: 'train'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_options_exit_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_dir_that_is_a_file_is_rejected_before_training(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--output-dir", str(a_file)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "`output_dir` must be a folder" in err
    assert err.startswith("usage: rnn-stability demo [-h]")  # the demo's usage, not the top-level one


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rnn-stability {rnn_stability.__version__}"


def test_output_dir_that_cannot_be_created_is_rejected(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--output-dir", str(blocker / "sub")])
    assert exit_info.value.code == 2
    assert "cannot create --output-dir" in capsys.readouterr().err


def test_module_entry_point_gives_exit_2_and_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "rnn_stability", "demo", "--cell", "gru", "--steps", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--steps must be in [1, 1000000], got -5" in done.stderr
    assert "Traceback" not in done.stderr and "usage: rnn-stability demo" in done.stderr


def test_table_compares_against_the_mean_baseline():
    run = RunResult(
        "stable", "ours", 100, 10.0, [0.1] * 100, [0.1] * 100, MEAN_BASELINE_MSE / 4, 40, 90, 0, 55.0
    )
    table = comparison_markdown([run])
    assert "25.0% of baseline" in table and "| 40 |" in table and "90 / 100" in table and "| 55 |" in table


def _fake_run(name, config, on_progress=None, num_threads=1):
    for step, mse in ((1, 0.5), (2, 0.005 if name == "stable" else 0.2)):
        on_progress(step, mse)
    solved = 2 if name == "stable" else None
    return RunResult(name, name, 2, 0.1, [0.5, 0.1], [0.5, 0.1], 0.1, solved)


def test_sequential_jobs_show_both_runs(monkeypatch, tmp_path):
    from rich.console import Console

    from rnn_stability.demo import runner

    monkeypatch.setattr(runner, "train_setup", _fake_run)
    console = Console(record=True, width=120)
    results = runner.run_setups(DemoConfig(steps=2, output_dir=tmp_path), console=console, jobs=1)
    assert [r.name for r in results] == ["vanilla", "stable"]
    shown = console.export_text()
    assert "solved @ 2" in shown and "not solved" in shown
    with pytest.raises(ValueError, match="`jobs` must be 1 or 2, got 3"):
        runner.run_setups(DemoConfig(), jobs=3)


def test_failed_run_exits_1_with_message(monkeypatch, capsys, tmp_path):
    from rnn_stability.demo import DemoError, app

    def fail(config, jobs=None):
        raise DemoError("the 'stable' run failed:\nboom")

    monkeypatch.setattr(app, "run_demo", fail)
    assert main(["demo", "--steps", "2", "--output-dir", str(tmp_path)]) == 1
    assert "rnn-stability demo: error: the 'stable' run failed" in capsys.readouterr().err


@pytest.mark.parametrize(("cell", "expected"), [("lstm", ["build", "train"]), ("gru", ["train"])])
def test_lstm_demo_builds_the_cpp_loop_before_timing(monkeypatch, tmp_path, cell, expected):
    """The build of the C++ loop (about 20 s, once) must not be counted as training time."""
    from rnn_stability.demo import app
    from rnn_stability.nn import native

    events = []

    class Stop(Exception):
        pass

    def run_setups(config, console=None, jobs=None):
        events.append("train")
        raise Stop

    monkeypatch.delenv("RNN_STABILITY_NATIVE", raising=False)
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build", lambda: events.append("build"))
    monkeypatch.setattr(app, "run_setups", run_setups)
    with pytest.raises(Stop):
        app.run_demo(DemoConfig(steps=2, cell=cell, output_dir=tmp_path))
    assert events == expected
