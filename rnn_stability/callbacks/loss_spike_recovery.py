"""Recover from loss spikes in-process: skip the step, or roll back to a snapshot and cool the learning rate."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from rnn_stability.callbacks.logging_steps import is_logging_step, log_step_metrics, resolve_interval
from rnn_stability.callbacks.portable_state import portable_state
from rnn_stability.callbacks.training_snapshot import TrainingSnapshot
from rnn_stability.functional.clipping import discard_grads_, uses_host_scalars
from rnn_stability.functional.clipping._checks import check_fraction, check_positive_int
from rnn_stability.functional.loss_spikes import LossSpikeDetector, mean_across_ranks

__all__ = ["LossSpikeRecovery"]

ACTIONS = ("skip", "rollback")


class LossSpikeRecovery(Callback):
    r"""Detect loss spikes and non-finite losses before the optimizer step, then skip it or roll back.

    The loss is read in `on_before_backward` (no extra forward; with fp16 AMP it is divided by the loss scale)
    and judged in `on_before_optimizer_step`, before the update, by
    `rnn_stability.functional.LossSpikeDetector`: non-finite, or
    $\log\ell > \mu + \max(z\sigma, \log r)$ against ZClip-style EMA statistics of the log-loss (Kumar et al.
    2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", applied to the loss; $r$ is the outlier
    multiplier of llm-foundry's `KillLossSpike`). With `accumulate_grad_batches > 1` the judged loss is the
    mean over the window's micro-batches; under DDP it is the mean over ranks, so every rank keeps the same
    history and takes the same decision. In manual optimization with several optimizers, the losses
    backpropagated since the previous optimizer step belong to the next optimizer that steps, and each
    optimizer keeps its own history.

    Actions (`action`):

    - `"skip"`: the step's gradients are set to `None` (`rnn_stability.functional.discard_grads_`, as the
      non-finite guard of `AdaptiveGradientClipping` does), so `optimizer.step()` leaves the weights and the
      optimizer state (moments, step counter) bit-identical. After `max_consecutive_skips` skips in a row a
      `RuntimeError` is raised.
    - `"rollback"`: the step is dropped the same way and, at the end of the batch, after Lightning has
      stepped the LR schedulers, the model, optimizers, LR schedulers and fp16 `GradScaler` are restored from
      the latest `rnn_stability.callbacks.training_snapshot.TrainingSnapshot` (one copy on the CPU, taken at
      `on_train_start` and then every `snapshot_every_n_steps` good optimizer steps), and the detector's
      statistics return to what they were then (after a rollback to the first snapshot, taken before any
      step, the warm-up starts again). The next
      `cooldown_steps` optimizer steps then run at `lr_factor` times the scheduled learning rate, after
      which the schedule is followed as before. The data loader moves on, so the batches between snapshot and
      spike are skipped: PaLM's recipe (Chowdhery et al. 2022, Sec. 5.1: restart ~100 steps before the
      spike, skip 200-500 batches) and OPT's lowered learning rate on restart (Zhang et al. 2022), done in
      the running process. The `max_rollbacks + 1`-th rollback raises a `RuntimeError` instead.

    The cooldown scales `param_group["lr"]` only *inside* `optimizer.step()` (optimizer step pre- and
    post-hooks), so LR schedulers, `LearningRateMonitor` and checkpoints always see the scheduled value, and a
    chainable scheduler (`StepLR`, ...) never compounds the factor. A step skipped by the `GradScaler`
    (fp16 overflow) does not count towards the cooldown. Lightning still counts dropped and rolled-back steps
    in `global_step`.

    **Resuming**: the detector statistics, counters and the remaining cooldown are in the checkpoint
    (`state_dict` of plain values). The snapshot is not: the checkpoint already holds the model, optimizer,
    scheduler and scaler state at the moment it was written, which is the state a resumed run starts from,
    so `on_train_start` of the resumed run takes the first snapshot from it; storing another copy would
    double the checkpoint's size for nothing.

    **Cost**: on accelerators, one host synchronisation per optimizer step (reading the verdict; under DDP
    after a one-element `all_reduce` of the loss) and the EMA arithmetic on 0-d tensors; on the CPU the loss
    is read as a number and judged with host scalars (`LossSpikeDetector.judge`), the library's rule
    (`rnn_stability.functional.uses_host_scalars`). In `"rollback"` mode add a copy of the model and
    optimizer state to the CPU every `snapshot_every_n_steps` steps (see
    `benchmarks/results/loss_spike_overhead.md`). FSDP / model-parallel strategies are refused (a snapshot
    of a shard is not a snapshot of the model).

    Place it before `AdaptiveGradientClipping` in `callbacks=[...]`, so that a step it drops has no gradients
    left for the clipper's non-finite guard to count a second time.

    Logged through `pl_module.log` every `log_every_n_steps` optimizer steps: `loss_spikes/spikes` (bad steps
    seen, non-finite ones included), `loss_spikes/skipped_steps`, `loss_spikes/rollbacks` and
    `loss_spikes/lr_factor` (the factor applied to the scheduled learning rate now: `lr_factor` during a
    cooldown, else 1).

    Args:
        action: `"skip"` (default) or `"rollback"` (see above). The default was `"rollback"` until the
            stability suite (`benchmarks/stability`) showed it giving up under recurring bad batches: each
            one sent the run back to its last snapshot until `max_rollbacks` raised. Skipping is right for
            bad batches; choose `"rollback"` for a run that drifts over several steps.
        alpha: EMA factor of the log-loss statistics, in `(0, 1)` (ZClip: 0.97).
        z_threshold: z-score of the log-loss above which a step is a spike (> 0).
        warmup_steps: optimizer steps that only initialise the statistics (>= 2); non-finite losses are caught
            from the first step.
        min_ratio: a spike must also exceed `min_ratio` times the EMA loss level (>= 1).
        snapshot_every_n_steps: good optimizer steps between snapshots in `"rollback"` mode (>= 1).
        lr_factor: learning-rate multiplier during the cooldown after a rollback, in `(0, 1]`.
        cooldown_steps: optimizer steps the cooldown lasts (>= 0; 0 disables it).
        max_rollbacks: rollbacks allowed over the whole run before giving up (>= 1).
        max_consecutive_skips: skips in a row, per optimizer, before giving up in `"skip"` mode (>= 1).
        log_every_n_steps: logging interval in optimizer steps; `None` uses the Trainer's.

    Raises:
        ValueError: if an argument is outside its range.
        TypeError: if an argument has the wrong type.
        MisconfigurationException: at `setup` under FSDP or model-parallel strategies.
        RuntimeError: after `max_rollbacks` rollbacks or `max_consecutive_skips` consecutive skips, or for a
            negative loss (the rule works on its log).

    Examples:
        >>> from lightning import Trainer
        >>> recovery = LossSpikeRecovery(action="rollback", snapshot_every_n_steps=100, lr_factor=0.1)
        >>> trainer = Trainer(callbacks=[recovery], logger=False, enable_progress_bar=False)
        >>> recovery.num_spikes, recovery.num_skipped_steps, recovery.num_rollbacks, recovery.current_lr_factor
        (0, 0, 0, 1.0)
    """

    def __init__(
        self,
        action: str = "skip",
        alpha: float = 0.97,
        z_threshold: float = 4.0,
        warmup_steps: int = 25,
        min_ratio: float = 2.0,
        snapshot_every_n_steps: int = 100,
        lr_factor: float = 0.5,
        cooldown_steps: int = 100,
        max_rollbacks: int = 5,
        max_consecutive_skips: int = 10,
        log_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        if action not in ACTIONS:
            raise ValueError(f"`action` must be one of {ACTIONS}, got {action!r}.")
        self.action = action
        LossSpikeDetector(alpha, z_threshold, warmup_steps, min_ratio)  # its own checks validate these now
        self.alpha, self.z_threshold = float(alpha), float(z_threshold)
        self.warmup_steps, self.min_ratio = warmup_steps, float(min_ratio)
        self.snapshot_every_n_steps = check_positive_int("snapshot_every_n_steps", snapshot_every_n_steps)
        self.lr_factor = check_fraction("lr_factor", lr_factor, 0.0, 1.0, open_low=True)
        if not isinstance(cooldown_steps, int) or isinstance(cooldown_steps, bool):
            raise TypeError(f"`cooldown_steps` must be an int >= 0, got {cooldown_steps!r}.")
        if cooldown_steps < 0:
            raise ValueError(f"`cooldown_steps` must be an int >= 0, got {cooldown_steps!r}.")
        self.cooldown_steps = cooldown_steps
        self.max_rollbacks = check_positive_int("max_rollbacks", max_rollbacks)
        self.max_consecutive_skips = check_positive_int("max_consecutive_skips", max_consecutive_skips)
        if log_every_n_steps is not None:
            check_positive_int("log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps

        self.num_spikes = 0
        self.num_skipped_steps = 0
        self.num_rollbacks = 0
        self.snapshot: TrainingSnapshot | None = None
        self._detectors: dict[int, LossSpikeDetector] = {}
        self._snapshot_detectors: dict[int, dict[str, Any]] = {}  # detector statistics when snapshotted
        self._consecutive_skips: dict[int, int] = {}
        self._cooldown_left = 0
        self._good_since_snapshot = 0
        self._pending_loss: Tensor | None = None
        self._rollback_pending = False
        self._scaled_lrs: dict[int, list[Any]] = {}  # id(optimizer) -> scheduled lrs while inside step()
        self._hooks: list[RemovableHandle] = []

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies (darts' `save`, neuralforecast's `fit`) leave the run behind.
        return portable_state(
            self, {"snapshot": None, "_hooks": [], "_pending_loss": None, "_scaled_lrs": {}}
        )

    @property
    def current_lr_factor(self) -> float:
        """The factor applied to the scheduled learning rate now (`lr_factor` during a cooldown, else 1)."""
        return self.lr_factor if self._cooldown_left > 0 else 1.0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(action=self.action)

    def _new_detector(self) -> LossSpikeDetector:
        return LossSpikeDetector(self.alpha, self.z_threshold, self.warmup_steps, self.min_ratio)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy):
            raise MisconfigurationException(
                f"`LossSpikeRecovery` does not support `{type(trainer.strategy).__name__}`: each rank holds only a"
                " shard of the model and optimizer state, so its snapshot is not a snapshot of the model. Use DDP."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        for optimizer in trainer.optimizers:
            self._hooks.append(optimizer.register_step_pre_hook(self._scale_lr))
            self._hooks.append(optimizer.register_step_post_hook(self._unscale_lr))
        if self.action == "rollback":
            self._take_snapshot(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self.snapshot = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _scale_lr(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # torch runs the step hooks twice when an optimizer subclass's `step` calls its (also patched) base
        # class's `step`: scale once, in the outer call, so the factor is never applied twice
        if self._cooldown_left <= 0 or id(optimizer) in self._scaled_lrs:
            return
        self._scaled_lrs[id(optimizer)] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * self.lr_factor

    def _unscale_lr(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        scheduled = self._scaled_lrs.pop(id(optimizer), None)
        if scheduled is None:
            return
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr
        self._cooldown_left = max(self._cooldown_left - 1, 0)

    def _take_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.snapshot = TrainingSnapshot.capture(trainer, pl_module)
        self._snapshot_detectors = {idx: detector.state_dict() for idx, detector in self._detectors.items()}
        self._good_since_snapshot = 0

    def _set_detectors(self, states: dict[Any, dict[str, Any]]) -> None:
        self._detectors = {}
        for idx, state in states.items():
            detector = self._new_detector()
            detector.load_state_dict(state)
            self._detectors[int(idx)] = detector

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        value = loss.detach().float()
        scale = getattr(getattr(trainer.precision_plugin, "scaler", None), "_scale", None)
        if scale is not None:  # fp16 AMP: Lightning hands over the loss already multiplied by the loss scale
            value = value / scale
        self._pending_loss = value if self._pending_loss is None else self._pending_loss + value

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        raw = getattr(optimizer, "_optimizer", optimizer)
        idx = next((i for i, opt in enumerate(trainer.optimizers) if opt is raw), 0)
        loss, self._pending_loss = self._pending_loss, None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self._rollback_pending:  # restored at batch end anyway: keep the other optimizers still too
            discard_grads_(params)
            return
        if loss is None:  # nothing was backpropagated for this step: nothing to judge
            return
        loss = mean_across_ranks(loss)
        detector = self._detectors.get(idx)
        if detector is None:  # not `setdefault`: building a detector every step would cost more than judging
            detector = self._detectors[idx] = self._new_detector()
        if uses_host_scalars(loss.device):  # reading a CPU value is free; tensor bookkeeping is not
            value = loss.item()
            bad, negative = detector.judge(value), value < 0
        else:  # the one host sync of the step
            bad, negative = torch.stack([detector.step(loss), loss < 0]).tolist()
        if negative:
            raise RuntimeError(
                f"`LossSpikeRecovery` judges the log of the loss, but optimizer {idx} got a negative loss"
                f" ({loss.item():.6g}) at global step {trainer.global_step}. Return a loss >= 0 (e.g. add a"
                " known lower bound) from `training_step`."
            )
        if bad:
            self.num_spikes += 1
            if self.action == "skip":
                self._skip(trainer, idx, params)
            else:
                self._start_rollback(trainer, idx, params)
        else:
            self._consecutive_skips[idx] = 0
            self._good_since_snapshot += 1
        self._log(trainer, pl_module, idx)

    def _skip(self, trainer: pl.Trainer, idx: int, params: list[Tensor]) -> None:
        consecutive = self._consecutive_skips.get(idx, 0) + 1
        self._consecutive_skips[idx] = consecutive
        if consecutive >= self.max_consecutive_skips:
            raise RuntimeError(
                f"{consecutive} consecutive optimizer steps (`max_consecutive_skips`={self.max_consecutive_skips})"
                f" of optimizer {idx} had a spiking or non-finite loss, at global step {trainer.global_step}."
                " The loss level may have changed for good (raise `z_threshold`/`min_ratio`) or training diverged"
                " (lower the learning rate, or use `action='rollback'`)."
            )
        self.num_skipped_steps += 1
        discard_grads_(params)

    def _start_rollback(self, trainer: pl.Trainer, idx: int, params: list[Tensor]) -> None:
        if self.num_rollbacks >= self.max_rollbacks:
            raise RuntimeError(
                f"Loss spike of optimizer {idx} at global step {trainer.global_step} after {self.num_rollbacks}"
                f" rollbacks (`max_rollbacks`={self.max_rollbacks}): training keeps diverging. Lower the learning"
                " rate, or lower `lr_factor` / raise `cooldown_steps`."
            )
        discard_grads_(params)
        self._rollback_pending = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # here Lightning has already stepped the LR schedulers, so a restore leaves them exactly as snapshotted
        if self._rollback_pending:
            self._rollback_pending = False
            assert self.snapshot is not None  # taken at on_train_start
            self.snapshot.restore(trainer, pl_module)
            # the restored model is judged against the losses it had then, not the abandoned run's (a rollback
            # to the untrained start would otherwise spike against the trained loss level at once)
            self._set_detectors(self._snapshot_detectors)
            self.num_rollbacks += 1
            self._cooldown_left = self.cooldown_steps
            self._good_since_snapshot = 0
        elif self.action == "rollback" and self._good_since_snapshot >= self.snapshot_every_n_steps:
            self._take_snapshot(trainer, pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, idx: int) -> None:
        interval = resolve_interval(trainer, self.log_every_n_steps)
        if idx != 0 or not is_logging_step(trainer, interval):
            return
        values = {
            "loss_spikes/spikes": float(self.num_spikes),
            "loss_spikes/skipped_steps": float(self.num_skipped_steps),
            "loss_spikes/rollbacks": float(self.num_rollbacks + self._rollback_pending),
            "loss_spikes/lr_factor": self.current_lr_factor,
        }
        log_step_metrics(trainer, pl_module, values, interval)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_spikes": self.num_spikes,
            "num_skipped_steps": self.num_skipped_steps,
            "num_rollbacks": self.num_rollbacks,
            "cooldown_left": self._cooldown_left,
            "consecutive_skips": dict(self._consecutive_skips),
            "detectors": {idx: detector.state_dict() for idx, detector in self._detectors.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_spikes = int(state_dict["num_spikes"])
        self.num_skipped_steps = int(state_dict["num_skipped_steps"])
        self.num_rollbacks = int(state_dict["num_rollbacks"])
        self._cooldown_left = int(state_dict["cooldown_left"])
        self._consecutive_skips = {int(k): int(v) for k, v in state_dict["consecutive_skips"].items()}
        self._set_detectors(state_dict["detectors"])
