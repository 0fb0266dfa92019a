"""Gradient-norm monitoring: pre/post-clip total norm, grouped norms, update ratios, vanishing/exploding alerts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from rnn_stability.callbacks.adaptive_gradient_clipping import AdaptiveGradientClipping
from rnn_stability.callbacks.logging_steps import is_logging_step, log_step_metrics, resolve_interval
from rnn_stability.callbacks.portable_state import portable_state
from rnn_stability.functional.grad_norm import _check_norm_type, foreach_norms, nonfinite_count, total_norm
from rnn_stability.functional.norm_groups import (
    GRANULARITIES,
    group_norms,
    group_parameters,
    update_to_weight_ratio,
)

__all__ = ["GradientNormMonitor"]


@dataclass
class _Plan:
    """What to measure for one optimizer: its parameters in order, their names and groups (built once)."""

    params: list[Tensor]
    group_names: list[str]
    group_index: list[int]


@dataclass
class _Pending:
    """Device tensors measured during one logging step, converted to Python numbers in one go at batch end."""

    step: int
    metrics: dict[str, Tensor] = field(default_factory=dict)
    unlogged: set[str] = field(default_factory=set)  # measured for the alerts only


class GradientNormMonitor(Callback):
    r"""Log gradient norms before and after clipping, grouped norms, and warn on vanishing/exploding groups.

    Every `log_every_n_steps` optimizer steps the callback logs, through `pl_module.log` (so to every
    logger the Trainer has), the keys:

    - `grad_norm/total_pre_clip`: total gradient norm before clipping, as `clip_grad_norm_` returns it.
    - `grad_norm/total_post_clip`: total norm of the gradient the optimizer actually used.
    - `grad_norm/max`: largest per-parameter gradient norm.
    - `grad_norm/nonfinite`: number of NaN/Inf gradient elements.
    - `grad_norm/<group>`: gradient norm of each group (see `granularity`; none at `"total"`, whose one
      group is the total norm).
    - `weight_norm/<group>`: weight norm of each group after the step (if `log_weight_norms`).
    - `update_ratio/<group>`: `‖Δw‖ / ‖w‖` of the step, `w` before the update (if `log_update_ratio`).

    One name per number: with an `rnn_stability.callbacks.AdaptiveGradientClipping` among the callbacks,
    the two totals are not logged here, because the clipper logs them as `grad_clip/pre_clip_norm` and
    `grad_clip/post_clip_norm`. With more than one optimizer (manual optimization) every key gets the suffix
    `/optimizer_<index>`. Every key of every callback is listed on the docs' "Logged metrics" page.

    **Where each number comes from.** Lightning calls every callback's `on_before_optimizer_step` (after AMP
    unscaling, once per accumulation window), then `configure_gradient_clipping` (``Trainer(gradient_clip_val=
    ...)``), then the optimizer update. The pre-clip norm, the max, the non-finite count and the group norms are
    measured in `on_before_optimizer_step`; if an
    `rnn_stability.callbacks.AdaptiveGradientClipping` placed *before* this callback already clipped this
    step, they describe its clipped gradient (put the monitor first to be alerted on unclipped group
    norms). The
    post-clip norm is measured in an optimizer step *post*-hook: optimizers do not modify `.grad` and
    Lightning zeroes it only at the next step, so this is exactly the gradient of the update whatever clipped
    it. (An optimizer step *pre*-hook would be too early: without AMP, Lightning runs
    `training_step`, backward and clipping inside `optimizer.step(closure)`, after the pre-hooks.) When the
    optimizer step does not run (the fp16 `GradScaler` found Inf gradients), that step's
    `total_post_clip`, `weight_norm` and `update_ratio` are not logged.

    **No host synchronisation on other steps.** Outside logging steps the hooks only compare Python integers.
    On a logging step all measured values are moved to the host with a single `tolist()`, then logged, and
    the alerts are evaluated on those numbers; the alerts are therefore only checked on logging steps.

    Args:
        log_every_n_steps: log every this many optimizer steps; `None` uses `Trainer(log_every_n_steps)`.
            The Trainer's interval logs through `pl_module.log`; any other interval writes to the loggers
            directly (see `rnn_stability.callbacks.logging_steps`).
        granularity: how parameter gradients are grouped: `"total"` (one group, `total`), `"module"` (by the
            module directly owning the parameter, e.g. `rnn` or `encoder.0`; parameters of the
            LightningModule itself form `root`) or `"parameter"` (one group per parameter name).
        norm_type: order of all norms, a positive number or `inf`.
        log_weight_norms: also log `weight_norm/<group>`.
        log_update_ratio: also log `update_ratio/<group>`; weights are cloned on logging steps only.
        warn_below: warn when a group's gradient norm is below this (vanishing gradients).
        warn_above: warn when a group's gradient norm is above this or not finite (exploding gradients).
        warn_every_n_steps: at most one warning of each kind per this many steps.

    Raises:
        ValueError: if an argument is outside its accepted range.
        TypeError: if `norm_type` is not a number, or `log_weight_norms` / `log_update_ratio` not a bool.

    Examples:
        >>> from lightning.pytorch import Trainer
        >>> monitor = GradientNormMonitor(granularity="module", warn_above=100.0)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_checkpointing=False)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        granularity: str = "module",
        norm_type: float = 2.0,
        log_weight_norms: bool = False,
        log_update_ratio: bool = False,
        warn_below: float | None = None,
        warn_above: float | None = None,
        warn_every_n_steps: int = 100,
    ) -> None:
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"`log_every_n_steps` must be None or a positive int, got {log_every_n_steps!r}."
            )
        if granularity not in GRANULARITIES:
            raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}.")
        if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)):
            raise TypeError(f"`norm_type` must be a positive float or inf, got {norm_type!r}.")
        # bool("no") is True: a string would silently switch the option on
        for name, flag in (("log_weight_norms", log_weight_norms), ("log_update_ratio", log_update_ratio)):
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
        for name, value in (("warn_below", warn_below), ("warn_above", warn_above)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
            ):
                raise ValueError(f"`{name}` must be None or a non-negative float, got {value!r}.")
        if warn_below is not None and warn_above is not None and warn_below >= warn_above:
            raise ValueError(f"`warn_below` ({warn_below}) must be smaller than `warn_above` ({warn_above}).")
        if (
            isinstance(warn_every_n_steps, bool)
            or not isinstance(warn_every_n_steps, int)
            or warn_every_n_steps < 1
        ):
            raise ValueError(f"`warn_every_n_steps` must be a positive int, got {warn_every_n_steps!r}.")
        self.log_every_n_steps = log_every_n_steps
        self.granularity = granularity
        self.norm_type = _check_norm_type(norm_type)
        self.log_weight_norms = bool(log_weight_norms)
        self.log_update_ratio = bool(log_update_ratio)
        self.warn_below = None if warn_below is None else float(warn_below)
        self.warn_above = None if warn_above is None else float(warn_above)
        self.warn_every_n_steps = warn_every_n_steps
        self.last_warning_step: dict[str, int | None] = {"below": None, "above": None}

        self._interval = 0
        self._trainer: pl.Trainer | None = None
        self._plans: list[_Plan] = []
        self._clippers: list[AdaptiveGradientClipping] = []
        self._handles: list[RemovableHandle] = []
        self._pending: dict[int, _Pending] = {}
        self._weights_before: dict[int, list[Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies (darts' `save`, neuralforecast's `fit`) leave the run behind.
        return portable_state(
            self,
            {
                "_trainer": None,
                "_plans": [],
                "_clippers": [],
                "_handles": [],
                "_pending": {},
                "_weights_before": {},
            },
        )

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps, granularity=self.granularity, norm_type=self.norm_type
        )

    # ------------------------------------------------------------------ set-up and tear-down

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._interval = resolve_interval(trainer, self.log_every_n_steps)
        self._trainer = trainer
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        self._clippers = [cb for cb in callbacks if isinstance(cb, AdaptiveGradientClipping)]
        names = {id(p): name for name, p in pl_module.named_parameters()}
        self._remove_hooks()
        self._plans = []
        for optimizer in trainer.optimizers:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            param_names = [names.get(id(p), f"unnamed_{i}") for i, p in enumerate(params)]
            group_names, group_index = group_parameters(param_names, self.granularity)
            self._plans.append(_Plan(params, group_names, group_index))
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
            if self.log_update_ratio:
                self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._trainer = None
        self._plans = []
        self._clippers = []

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending.clear()
        self._weights_before.clear()

    # ------------------------------------------------------------------ measuring (device tensors only)

    def _is_logging_step(self, trainer: pl.Trainer) -> bool:
        return is_logging_step(trainer, self._interval)

    def _optimizer_index(self, trainer: pl.Trainer, optimizer: Any) -> int | None:
        for index, candidate in enumerate(trainer.optimizers):
            if candidate is optimizer:
                return index
        return None

    def _key(self, prefix: str, name: str, optimizer_idx: int) -> str:
        suffix = f"/optimizer_{optimizer_idx}" if len(self._plans) > 1 else ""
        return f"{prefix}/{name}{suffix}"

    def _grads(self, plan: _Plan) -> tuple[list[Tensor], list[int]]:
        members = [
            (p.grad, g) for p, g in zip(plan.params, plan.group_index, strict=True) if p.grad is not None
        ]
        return [grad for grad, _ in members], [g for _, g in members]

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._is_logging_step(trainer):
            return
        index = self._optimizer_index(trainer, optimizer)
        if index is None or index >= len(self._plans):
            return
        plan = self._plans[index]
        grads, groups = self._grads(plan)
        norms = foreach_norms(grads, self.norm_type)
        measured_total = total_norm(norms, self.norm_type)
        pending = _Pending(step=trainer.global_step)
        if not self._clippers:  # otherwise the clipper logs the totals (grad_clip/pre_clip_norm)
            pending.metrics[self._key("grad_norm", "total_pre_clip", index)] = measured_total
        pending.metrics[self._key("grad_norm", "max", index)] = (
            torch.stack(norms).max() if norms else measured_total
        )
        pending.metrics[self._key("grad_norm", "nonfinite", index)] = nonfinite_count(plan.params)
        grouped = group_norms(norms, groups, len(plan.group_names), self.norm_type)
        for name, value in zip(plan.group_names, grouped.unbind(), strict=True):
            key = self._key("grad_norm", name, index)
            pending.metrics[key] = value
            if self.granularity == "total":  # its one group is the total norm, logged once already
                pending.unlogged.add(key)
        self._pending[index] = pending

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        trainer = self._trainer
        if trainer is None or not self._is_logging_step(trainer):
            return
        index = self._optimizer_index(trainer, optimizer)
        if index is not None and index < len(self._plans):
            self._weights_before[index] = [p.detach().clone() for p in self._plans[index].params]

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        trainer = self._trainer
        if trainer is None or not self._pending:
            return
        index = self._optimizer_index(trainer, optimizer)
        pending = self._pending.get(index) if index is not None else None
        if index is None or pending is None:
            return
        plan = self._plans[index]
        if not self._clippers:
            grads, _ = self._grads(plan)
            pending.metrics[self._key("grad_norm", "total_post_clip", index)] = total_norm(
                foreach_norms(grads, self.norm_type), self.norm_type
            )
        weights = [p.detach() for p in plan.params]
        num_groups = len(plan.group_names)
        if self.log_weight_norms:
            grouped = group_norms(
                foreach_norms(weights, self.norm_type), plan.group_index, num_groups, self.norm_type
            )
            for name, value in zip(plan.group_names, grouped.unbind(), strict=True):
                pending.metrics[self._key("weight_norm", name, index)] = value
        before = self._weights_before.pop(index, None)
        if before is not None:
            ratio = update_to_weight_ratio(before, weights, plan.group_index, num_groups, self.norm_type)
            for name, value in zip(plan.group_names, ratio.unbind(), strict=True):
                pending.metrics[self._key("update_ratio", name, index)] = value

    # ------------------------------------------------------------------ logging (logging steps only)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._pending:
            return
        pending = list(self._pending.items())
        self._pending.clear()
        self._weights_before.clear()
        names = [name for _, p in pending for name in p.metrics]
        tensors = [t for _, p in pending for t in p.metrics.values()]
        device = tensors[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # float64 keeps large counts exact
        # one device-to-host transfer for everything logged this step
        values = torch.stack([t.detach().to(device=device, dtype=dtype) for t in tensors]).tolist()
        unlogged = {name for _, p in pending for name in p.unlogged}
        logged = {name: value for name, value in zip(names, values, strict=True) if name not in unlogged}
        log_step_metrics(trainer, pl_module, logged, self._interval)
        if self.warn_below is None and self.warn_above is None:
            return
        offset = 0
        for index, p in pending:
            count = len(p.metrics)
            metrics = dict(zip(p.metrics, values[offset : offset + count], strict=True))
            offset += count
            plan = self._plans[index]
            group_values = {name: metrics[self._key("grad_norm", name, index)] for name in plan.group_names}
            self._check_thresholds(group_values, p.step)

    def _check_thresholds(self, group_values: dict[str, float], step: int) -> None:
        checks = (
            ("below", self.warn_below, lambda v, t: v < t, "vanishing"),
            # a non-finite norm counts as exploding: `not v <= t` is true for nan
            ("above", self.warn_above, lambda v, t: not v <= t, "exploding"),
        )
        for kind, threshold, crosses, meaning in checks:
            if threshold is None:
                continue
            last = self.last_warning_step[kind]
            if last is not None and step - last < self.warn_every_n_steps:
                continue
            offending = {name: value for name, value in group_values.items() if crosses(value, threshold)}
            if offending:
                listed = ", ".join(f"{name}={value:.3g}" for name, value in offending.items())
                rank_zero_warn(
                    f"GradientNormMonitor: {meaning} gradients at step {step}: gradient norm {kind}"
                    f" warn_{kind}={threshold:g} in {listed}."
                )
                self.last_warning_step[kind] = step

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_warning_step": dict(self.last_warning_step)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_warning_step.update(state_dict.get("last_warning_step", {}))
