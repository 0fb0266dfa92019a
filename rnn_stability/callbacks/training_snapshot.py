"""An in-memory copy of what a training step changes: weights, optimizers, LR schedulers, AMP loss scale."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

__all__ = ["TrainingSnapshot", "cpu_copy"]


def cpu_copy(state: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor copied to the CPU, sharing nothing with `state`.

    Examples:
        >>> import torch
        >>> w = torch.ones(2)
        >>> copied = cpu_copy({"w": w, "step": 3, "groups": [{"lr": 0.1}]})
        >>> _ = w.add_(1.0)
        >>> copied
        {'w': tensor([1., 1.]), 'step': 3, 'groups': [{'lr': 0.1}]}
    """
    if isinstance(state, Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return type(state)((key, cpu_copy(value)) for key, value in state.items())
    if isinstance(state, list | tuple):
        return type(state)(cpu_copy(value) for value in state)
    return copy.deepcopy(state)


def _nbytes(state: Any) -> int:
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_nbytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(_nbytes(value) for value in state)
    return 0


@dataclass(frozen=True)
class TrainingSnapshot:
    """The training state after an optimizer step, kept on the CPU, to return to with `restore`.

    Holds `pl_module.state_dict()` (parameters and persistent buffers), the `state_dict()` of every optimizer
    (moments, step counters, param-group hyper-parameters such as the learning rate), of every LR scheduler
    in `trainer.lr_scheduler_configs` and of the fp16 `GradScaler` when the precision plugin has one. Not
    included: the Trainer's counters (`global_step` keeps counting, the data loader moves on to new batches)
    and random number generators.

    Attributes:
        step: `trainer.global_step` when the snapshot was taken.
        model: CPU copy of `pl_module.state_dict()`.
        optimizers: CPU copies of the optimizers' state dicts, in `trainer.optimizers` order.
        schedulers: copies of the LR schedulers' state dicts, in `trainer.lr_scheduler_configs` order.
        scaler: copy of the `GradScaler` state dict, or `None` without one.

    Examples:
        >>> import torch
        >>> from rnn_stability.callbacks.training_snapshot import TrainingSnapshot
        >>> snapshot = TrainingSnapshot(0, {"w": torch.zeros(3)}, [], [], None)
        >>> snapshot.nbytes
        12
    """

    step: int
    model: dict[str, Tensor]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    scaler: dict[str, Any] | None

    @classmethod
    def capture(cls, trainer: pl.Trainer, pl_module: pl.LightningModule) -> TrainingSnapshot:
        """Copy the current state of `pl_module` and of the Trainer's optimizers, schedulers and scaler."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return cls(
            step=trainer.global_step,
            model=cpu_copy(pl_module.state_dict()),
            optimizers=[cpu_copy(optimizer.state_dict()) for optimizer in trainer.optimizers],
            schedulers=[cpu_copy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs],
            scaler=None if scaler is None else cpu_copy(scaler.state_dict()),
        )

    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the snapshot back in place (parameters keep their identity) and drop every gradient.

        Optimizer and scheduler states are loaded from fresh copies: `Optimizer.load_state_dict` keeps
        tensors that already have the parameter's device and dtype, which would otherwise alias the snapshot
        and let the next step overwrite it.
        """
        pl_module.load_state_dict(self.model)
        for optimizer, state in zip(trainer.optimizers, self.optimizers, strict=True):
            optimizer.load_state_dict(cpu_copy(state))
        for config, state in zip(trainer.lr_scheduler_configs, self.schedulers, strict=True):
            config.scheduler.load_state_dict(cpu_copy(state))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and self.scaler is not None:
            scaler.load_state_dict(cpu_copy(self.scaler))
        for param in pl_module.parameters():
            param.grad = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the snapshot's tensors (the model and optimizer copies)."""
        return _nbytes(self.model) + _nbytes(self.optimizers) + _nbytes(self.schedulers)
