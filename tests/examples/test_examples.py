"""Smoke tests: every example runs a few steps with tiny sizes, from its real config file."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.examples.conftest import EXAMPLES


@pytest.mark.parametrize("config", ["vanilla", "stable"])
def test_adding_problem(config, load_example, quiet_cli_args):
    cli = load_example("adding_problem").main(
        [
            "fit",
            f"--config={EXAMPLES / 'adding_problem' / f'{config}.yaml'}",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
            "--data.seq_len=10",
            "--data.num_val_samples=8",
            "--data.batch_size=8",
            "--model.hidden_size=8",
            *quiet_cli_args,
        ]
    )
    assert cli.trainer.global_step == 3
    assert math.isfinite(float(cli.trainer.callback_metrics["val_mse"]))
    assert (cli.model.hparams.implementation == "rnn_stability") == (config == "stable")


@pytest.mark.parametrize("config", ["vanilla", "stable"])
def test_copy_task(config, load_example, quiet_cli_args):
    cli = load_example("copy_task").main(
        [
            "fit",
            f"--config={EXAMPLES / 'copy_task' / f'{config}.yaml'}",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
            "--data.delay=5",
            "--data.copy_len=3",
            "--data.num_val_samples=8",
            "--data.batch_size=8",
            "--model.hidden_size=8",
            *quiet_cli_args,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 3
    # the baseline of the data's delay (5), with no --model.* repeating the data's settings
    assert float(metrics["baseline_ce"]) == pytest.approx(3 * math.log(8) / 11)
    assert cli.model.copy_len == 3 and cli.model.num_symbols == 8
    assert 0 <= float(metrics["val_recall_acc"]) <= 1


def test_sunspots_forecasting(load_example, quiet_cli_args):
    module = load_example("sunspots_forecasting")
    cli = module.main(
        [
            "fit",
            f"--config={EXAMPLES / 'sunspots_forecasting' / 'config.yaml'}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--model.hidden_size=8",
            *quiet_cli_args,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert {"val_mae", "val_mape", "baseline_mae", "baseline_mape"} <= set(metrics)
    # The seasonal-naive baseline on 1951-2008 is a fixed number: recompute it from the raw series.
    years, values = module.load_sunspots()
    later = years > 1950
    naive = values[years.numel() - int(later.sum()) - 11 : -11]
    assert float(metrics["baseline_mae"]) == pytest.approx(
        float((values[later] - naive).abs().mean()), rel=1e-5
    )


def test_char_lm_converts_the_existing_model(load_example, quiet_cli_args, capsys):
    from rnn_stability.nn import LSTM

    module = load_example("char_lm")
    cli = module.main(
        [
            "fit",
            f"--config={EXAMPLES / 'char_lm' / 'config.yaml'}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--model.hidden_size=16",
            "--model.embedding_dim=8",
            "--prompt=Four score",
            *quiet_cli_args,
        ],
        sample_length=10,
    )
    assert isinstance(cli.model.model.lstm, LSTM) and cli.model.model.lstm.layer_norm
    perplexity = float(cli.trainer.callback_metrics["val_perplexity"])
    assert 1 < perplexity < 2 * cli.datamodule.vocab_size  # near-uniform after two steps
    # the prompt and the sample each under its own label, the sample last (it may hold line breaks)
    out = capsys.readouterr().out
    label = "prompt: 'Four score'\nsampled continuation (10 characters, temperature 0.8):\n"
    assert label in out and len(out.split(label)[1]) == 10 + 1  # print's own newline
    assert module.CORPUS.stat().st_size < 100_000


def test_plain_pytorch(load_example):
    result = load_example("plain_pytorch").main(
        ["--steps", "4", "--log-every", "2", "--seq-len", "10", "--hidden-size", "8", "--batch-size", "8"]
    )
    assert math.isfinite(result["mse"])
    assert 1 <= result["memory_length"] <= 10
    assert 0 <= result["clipped_steps"] <= 4


def test_plain_pytorch_help_and_errors(load_example, capsys):
    main = load_example("plain_pytorch").main
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "optimizer steps (default: 600)" in help_text and "sequences per step (default: 50)" in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["--steps", "0"])
    assert exit_info.value.code == 2 and "--steps must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config", sorted(EXAMPLES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_configs_bound_the_epochs(config):
    """Lightning's bar reads `Epoch 0/-2` when `max_epochs` is left at -1 (the `max_steps`-only case)."""
    trainer = yaml.safe_load(config.read_text())["trainer"]
    assert isinstance(trainer.get("max_epochs"), int) and trainer["max_epochs"] >= 1


def test_spike_recovery(load_example, quiet_cli_args, capsys):
    module = load_example("spike_recovery")
    cli = module.main(
        [
            "fit",
            f"--config={EXAMPLES / 'spike_recovery' / 'config.yaml'}",
            "--trainer.max_steps=8",
            "--trainer.val_check_interval=8",
            "--trainer.limit_val_batches=1",
            "--data.seq_len=5",
            "--data.num_val_samples=8",
            "--data.batch_size=8",
            "--data.bad_batch_every=4",  # targets x1000 at batch 2 (in the warm-up: trained on), NaN at batch 6
            "--model.hidden_size=8",
            *quiet_cli_args,
        ]
    )
    recovery, clipping = cli.trainer.callbacks[0], cli.trainer.callbacks[1]
    assert cli.trainer.global_step == 8
    assert (recovery.num_spikes, recovery.num_skipped_steps, recovery.num_rollbacks) == (1, 1, 0)
    assert clipping.num_skipped_steps == 0  # the NaN step was dropped first, not counted twice
    out = capsys.readouterr().out
    assert "LossSpikeRecovery(skip): spikes flagged 1, steps skipped 1, rollbacks 0" in out
    assert "final val_mse:" in out


def test_spike_recovery_bad_batches(load_example):
    import torch

    clean = [(torch.zeros(2, 3, 2), torch.ones(2, 1)) for _ in range(8)]
    batches = list(load_example("spike_recovery").BadBatches(clean, every=4))
    assert [float(y.max()) for _, y in batches] == [1, 1, 1000, 1, 1, 1, 1, 1]
    assert [bool(x.isnan().any()) for x, _ in batches] == [False] * 6 + [True, False]
