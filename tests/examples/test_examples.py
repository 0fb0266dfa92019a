"""Smoke tests: every example runs a few steps with tiny sizes, from its real config file."""

from __future__ import annotations

import math

import pytest

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
            "--model.delay=5",
            "--model.copy_len=3",
            "--model.hidden_size=8",
            *quiet_cli_args,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 3
    assert float(metrics["baseline_ce"]) == pytest.approx(3 * math.log(8) / 11)
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
            *quiet_cli_args,
        ],
        sample_length=10,
    )
    assert isinstance(cli.model.model.lstm, LSTM) and cli.model.model.lstm.layer_norm
    perplexity = float(cli.trainer.callback_metrics["val_perplexity"])
    assert 1 < perplexity < 2 * cli.datamodule.vocab_size  # near-uniform after two steps
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("Shall I compare thee")
    assert module.CORPUS.stat().st_size < 100_000


def test_plain_pytorch(load_example):
    result = load_example("plain_pytorch").main(
        ["--steps", "4", "--log-every", "2", "--seq-len", "10", "--hidden-size", "8", "--batch-size", "8"]
    )
    assert math.isfinite(result["mse"])
    assert 1 <= result["memory_length"] <= 10
    assert 0 <= result["clipped_steps"] <= 4
