"""Loss-spike recovery beside adaptive clipping and gradient-norm monitoring, on data with bad batches.

The adding problem (Hochreiter & Schmidhuber 1997) with an LSTM, trained through LightningCLI on a stream in
which every `bad_batch_every`-th batch is broken, alternately targets ×1000 (a scaling bug upstream) and a NaN
in the inputs (a corrupt record). `LossSpikeRecovery` drops those steps before the optimizer sees them,
`AdaptiveGradientClipping` (AutoClip) bounds the ordinary steps, `GradientNormMonitor` logs the norms.

Run from the repository root::

    .venv/bin/python examples/spike_recovery/train.py fit --config examples/spike_recovery/config.yaml

A summary of what each callback did is printed at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from lightning.pytorch.cli import ArgsType, LightningCLI
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from rnn_stability.callbacks import AdaptiveGradientClipping, LossSpikeRecovery
from rnn_stability.demo.models import SequenceRegressor
from rnn_stability.demo.task import AddingProblemDataModule

__all__ = ["BadBatches", "BadBatchAddingData", "main"]


class BadBatches(IterableDataset):
    """Passes `batches` through, breaking every `every`-th one (from batch `every // 2`): targets ×1000, NaN input.

    Args:
        batches: the clean stream of `(x, y)` batches.
        every: break one batch in this many (0: never).
    """

    def __init__(self, batches: Iterable[tuple[Tensor, Tensor]], every: int) -> None:
        super().__init__()
        self.batches, self.every = batches, every

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index, (x, y) in enumerate(self.batches):
            if self.every and index % self.every == self.every // 2:
                if (index // self.every) % 2 == 0:
                    y = y * 1000.0
                else:
                    x = x.clone()
                    x[0, 0, 0] = math.nan
            yield x, y


class BadBatchAddingData(AddingProblemDataModule):
    """`rnn_stability.demo.task.AddingProblemDataModule` whose training stream has bad batches (`BadBatches`).

    Args:
        bad_batch_every: break one training batch in this many (0: none); validation data stays clean.
        **kwargs: `seq_len`, `batch_size`, `num_val_samples`, `seed` of `AddingProblemDataModule`.
    """

    def __init__(self, bad_batch_every: int = 50, **kwargs: int) -> None:
        super().__init__(**kwargs)
        if not isinstance(bad_batch_every, int) or bad_batch_every < 0:
            raise ValueError(f"`bad_batch_every` must be an integer >= 0, got {bad_batch_every!r}.")
        self.bad_batch_every = bad_batch_every

    def train_dataloader(self) -> DataLoader:
        return DataLoader(BadBatches(self.train_stream, self.bad_batch_every), batch_size=None)


def summary(cli: LightningCLI) -> str:
    """One line per stabilising callback: what it did over the run, then the final validation MSE."""
    lines = []
    for callback in cli.trainer.callbacks:
        if isinstance(callback, LossSpikeRecovery):
            lines.append(
                f"LossSpikeRecovery({callback.action}): spikes flagged {callback.num_spikes},"
                f" steps skipped {callback.num_skipped_steps}, rollbacks {callback.num_rollbacks}"
            )
        elif isinstance(callback, AdaptiveGradientClipping):
            lines.append(
                f"AdaptiveGradientClipping({callback.strategy}): steps clipped {callback.num_clipped_steps}"
                f" of {callback.num_steps}, skipped as non-finite {callback.num_skipped_steps}"
            )
    mse = cli.trainer.callback_metrics.get("val_mse")
    lines.append(
        f"final val_mse: {float(mse):.4f} (mean predictor: 0.167)" if mse is not None else "no val_mse"
    )
    return "\n".join(lines)


def main(args: ArgsType = None) -> LightningCLI:
    """Runs the LightningCLI and prints `summary`; `args` replaces the command line (used by the smoke test)."""
    cli = LightningCLI(
        SequenceRegressor, BadBatchAddingData, args=args, save_config_kwargs={"overwrite": True}
    )
    if cli.trainer.state.finished:
        print(summary(cli))
    return cli


if __name__ == "__main__":
    main()
