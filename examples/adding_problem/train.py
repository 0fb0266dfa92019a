"""Adding problem (Hochreiter & Schmidhuber 1997) with LightningCLI: vanilla vs stable configs.

Run from the repository root::

    python examples/adding_problem/train.py fit --config examples/adding_problem/vanilla.yaml
    python examples/adding_problem/train.py fit --config examples/adding_problem/stable.yaml

The model and data are the ones the ``rnn-stability demo`` command uses
(:class:`rnn_stability.demo.models.SequenceRegressor`,
:class:`rnn_stability.demo.task.AddingProblemDataModule`); the two configs differ only in the recurrent
module and the callbacks.
"""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningCLI

from rnn_stability.demo.models import SequenceRegressor
from rnn_stability.demo.task import AddingProblemDataModule

__all__ = ["main"]


def main(args: ArgsType = None) -> LightningCLI:
    """Runs the LightningCLI; ``args`` replaces the command line (used by the smoke tests)."""
    return LightningCLI(
        SequenceRegressor,
        AddingProblemDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
