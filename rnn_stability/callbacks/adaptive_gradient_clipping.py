"""Gradient clipping in Lightning's real step: fixed, adaptive (AutoClip, ZClip, AGC), with a non-finite guard."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from rnn_stability.callbacks.clip_record import ClipRecord
from rnn_stability.callbacks.lightning_packages import is_lightning_instance
from rnn_stability.callbacks.logging_steps import is_logging_step, log_step_metrics, resolve_interval
from rnn_stability.callbacks.portable_state import portable_state
from rnn_stability.functional.clipping import (
    PercentileClipper,
    ZScoreClipper,
    adaptive_grad_clip_,
    any_across_ranks,
    clip_grad_value_,
    clip_grads_with_norm_,
    discard_grads_,
    nonfinite_parameter_names,
)
from rnn_stability.functional.clipping._checks import check_positive, check_positive_int
from rnn_stability.functional.clipping.nonfinite import ranks_with
from rnn_stability.functional.grad_norm import total_grad_norm

__all__ = ["AdaptiveGradientClipping"]

STRATEGIES = ("norm", "value", "percentile", "zscore", "agc")


class AdaptiveGradientClipping(Callback):
    r"""Clip gradients by norm, value, an adaptive threshold or unit-wise, and skip non-finite steps.

    Acts in `on_before_optimizer_step`: once per real optimizer step (on the accumulated gradient when
    `accumulate_grad_batches > 1`), after the fp16 `GradScaler` has unscaled the gradients and before
    `Trainer(gradient_clip_val=...)` would clip them. Strategies:

    - `"norm"`: total L2 norm clipped to `max_norm`.
    - `"value"`: every element clamped to `[-clip_value, clip_value]`.
    - `"percentile"`: AutoClip (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source
      Separation Networks"), norm clipped to the `percentile`-th percentile of the last `window_size`
      total norms (`rnn_stability.functional.PercentileClipper`).
    - `"zscore"`: ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
      arXiv:2504.02507), a norm whose z-score against an EMA exceeds `z_threshold` after `warmup_steps` is
      clipped to $\mu + z\sigma$ (`clip_rule="cap"`, the default) or by the paper's reciprocal rule
      $\mu + z\sigma / (z_g / z)$ (`clip_rule="reciprocal"`), optionally under an absolute `max_grad_norm`
      (`rnn_stability.functional.ZScoreClipper`).
    - `"agc"`: AGC (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
      Normalization"), unit-wise $\|g_i\|/\max(\|w_i\|,\epsilon) \le \lambda$, skipping `exclude`.

    **Non-finite guard** (`skip_nonfinite=True`): when the total gradient norm of the optimizer is NaN/Inf,
    every gradient of that optimizer is set to `None` so `optimizer.step()` leaves the weights and the
    optimizer state (moments, step counter) bit-identical; the step is counted in `num_skipped_steps` and
    never enters the adaptive statistics. After `max_consecutive_nonfinite` skips in a row a
    `RuntimeError` names the parameters holding non-finite gradients. Deciding to skip needs the one host
    synchronisation of the step (reading a flag; under DDP the flag is first all-reduced with `MAX`, so
    every rank takes the same decision). Lightning still counts a skipped step in `global_step` and steps
    the LR schedulers. The skip works with `Trainer(gradient_clip_val=...)` by norm or by value, with gradient
    accumulation and with manual optimization: Lightning's clipping of a skipped step, which has no gradient
    left, is made a no-op (torch's `clip_grad_value_` would raise on the empty list). With
    `skip_nonfinite=False` the callback never synchronises outside logging steps on an accelerator. On the
    CPU, where reading a value costs nothing, the clipping functions read the norm and threshold on the host
    and leave unclipped gradients untouched (`rnn_stability.functional.uses_host_scalars`); the decisions
    and gradients are the same.

    **fp16 AMP**: with a `GradScaler` (`precision="16-mixed"`) Inf gradients are expected while the loss
    scale calibrates and the scaler itself skips `optimizer.step()`; the guard then stays out of the way
    (no skip counted, no error, gradients left for the scaler, non-finite norms kept out of the statistics)
    and needs no sync. Dropping gradients is not an option there anyway: for an optimizer that unscales
    inside `step()` (fused), `GradScaler.step` would unscale no gradients and fail with "No inf checks
    were recorded"; such optimizers are refused, as their gradients are still scaled in this hook.
    `bf16-mixed` has no scaler and is guarded like fp32.

    **Multiple optimizers** (manual optimization, where `opt.step()` still runs this hook) keep separate
    adaptive state per optimizer index; clipping gradients yourself with `self.clip_gradients` in manual
    optimization is not affected by this callback. **FSDP** / model-parallel strategies are refused (each
    rank holds only a shard of the gradients, so its local norm is not the total norm).

    Logged through `pl_module.log` every `log_every_n_steps` optimizer steps (see that argument; with
    several optimizers each key gets the suffix `/optimizer_{idx}`):

    - `grad_clip/threshold`: the threshold in force (see `rnn_stability.callbacks.ClipRecord`); not logged
      while ZClip warms up without `max_grad_norm` (no threshold is in force: it would read `inf`), and
      `nan` on a step the non-finite guard skipped.
    - `grad_clip/pre_clip_norm`, `grad_clip/post_clip_norm`: total L2 gradient norm before and after.
    - `grad_clip/clipped_fraction`: fraction of optimizer steps since the previous logged value where
      clipping changed the gradients.
    - `grad_clip/skipped_steps`: total number of steps skipped by the non-finite guard.

    Args:
        strategy: one of `"norm"`, `"value"`, `"percentile"`, `"zscore"`, `"agc"`. Default `"percentile"`
            (AutoClip): it has no threshold to tune, as it follows the scale of the gradients.
        max_norm: threshold of `"norm"` (> 0).
        clip_value: element bound of `"value"` (> 0).
        percentile: AutoClip percentile in `[0, 100]` (paper: 10).
        window_size: AutoClip history length (>= 1).
        alpha: ZClip EMA factor in `(0, 1)` (paper: 0.97).
        z_threshold: ZClip z-score threshold (> 0; paper: 2.5).
        warmup_steps: ZClip warm-up steps (>= 2; paper: 25).
        clip_rule: ZClip rule for a spike: `"cap"` (default, $\mu + z\sigma$) or `"reciprocal"` (the paper's
            default; the `zclip` package's `mode="zscore"`).
        max_grad_norm: ZClip absolute cap on the norm (> 0), applied in warm-up too, or `None` (default) for
            none; the `zclip` package defaults to 1.0. Not to be confused with `max_norm`, the `"norm"`
            strategy's threshold.
        clip_factor: AGC $\lambda$ (> 0; paper: 0.01).
        eps: AGC weight-norm floor $\epsilon$ (> 0; paper: 1e-3).
        exclude: parameter names, module names or `fnmatch` patterns AGC leaves alone (e.g. `["head"]`).
        skip_nonfinite: skip steps with NaN/Inf gradients (see above).
        max_consecutive_nonfinite: skipped steps in a row before raising (>= 1).
        log_every_n_steps: logging interval in optimizer steps; `None` uses the Trainer's. Another interval
            is written straight to `trainer.loggers` (as `LearningRateMonitor` does), because Lightning
            would repeat a `pl_module.log` value, stale, at each of its own logging steps.

    Raises:
        ValueError: if an argument is outside its range.
        TypeError: if an argument has the wrong type.
        MisconfigurationException: at `setup` under FSDP or model-parallel strategies.
        RuntimeError: after `max_consecutive_nonfinite` consecutive non-finite steps, or for a fused
            optimizer under a `GradScaler`.

    Examples:
        >>> from lightning import Trainer
        >>> clipper = AdaptiveGradientClipping(strategy="percentile", percentile=10.0, window_size=500)
        >>> trainer = Trainer(callbacks=[clipper], logger=False, enable_progress_bar=False)
        >>> clipper.num_steps, clipper.num_skipped_steps, clipper.last_record is None
        (0, 0, True)
    """

    def __init__(
        self,
        strategy: str = "percentile",
        max_norm: float = 1.0,
        clip_value: float = 1.0,
        percentile: float = 10.0,
        window_size: int = 1000,
        alpha: float = 0.97,
        z_threshold: float = 2.5,
        warmup_steps: int = 25,
        clip_rule: str = "cap",
        max_grad_norm: float | None = None,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        exclude: list[str] | tuple[str, ...] = (),
        skip_nonfinite: bool = True,
        max_consecutive_nonfinite: int = 10,
        log_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}.")
        self.strategy = strategy
        self.max_norm = check_positive("max_norm", max_norm)
        self.clip_value = check_positive("clip_value", clip_value)
        self.clip_factor = check_positive("clip_factor", clip_factor)
        self.eps = check_positive("eps", eps)
        # build a throwaway clipper of each kind so their own checks validate the arguments now
        PercentileClipper(percentile, window_size)
        zscore = ZScoreClipper(alpha, z_threshold, warmup_steps, clip_rule, max_grad_norm)
        self.percentile, self.window_size = float(percentile), window_size
        self.alpha, self.z_threshold, self.warmup_steps = float(alpha), float(z_threshold), warmup_steps
        self.clip_rule, self.max_grad_norm = clip_rule, zscore.max_grad_norm
        # materialised once, before the check: a generator checked first would be empty when stored
        if isinstance(exclude, str) or not isinstance(exclude, Iterable):
            raise TypeError(f"`exclude` must be a list of parameter names or patterns, got {exclude!r}.")
        self.exclude = tuple(exclude)
        if not all(isinstance(p, str) for p in self.exclude):
            raise TypeError(f"`exclude` must be a list of parameter names or patterns, got {self.exclude!r}.")
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"`skip_nonfinite` must be a bool, got {skip_nonfinite!r}.")
        self.skip_nonfinite = skip_nonfinite
        self.max_consecutive_nonfinite = check_positive_int(
            "max_consecutive_nonfinite", max_consecutive_nonfinite
        )
        if log_every_n_steps is not None:
            check_positive_int("log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps

        self.num_steps = 0
        self.num_skipped_steps = 0
        self.last_record: ClipRecord | None = None
        self._clippers: dict[int, PercentileClipper | ZScoreClipper] = {}
        self._consecutive_nonfinite: dict[int, int] = {}
        self._clipped_total: Tensor | int = 0  # a tensor while training: counting needs no sync
        self._logged_at: tuple[int, Tensor | int] = (
            0,
            0,
        )  # (num_steps, clipped count) at the previous logged clipped_fraction
        self._names: dict[int, str] = {}
        self._warned_gradient_clip_val = False
        self._wrapped_plugin: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies (darts' `save`, neuralforecast's `fit`) leave the run behind.
        return portable_state(self, {"_names": {}, "_wrapped_plugin": None})

    @property
    def num_clipped_steps(self) -> int:
        """Optimizer steps where clipping changed the gradients (reading it is a host sync)."""
        return int(self._clipped_total)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(strategy=self.strategy)

    def _new_clipper(self) -> PercentileClipper | ZScoreClipper:
        if self.strategy == "percentile":
            return PercentileClipper(self.percentile, self.window_size)
        return ZScoreClipper(
            self.alpha, self.z_threshold, self.warmup_steps, self.clip_rule, self.max_grad_norm
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if is_lightning_instance(
            trainer.strategy, "strategies.FSDPStrategy", "strategies.ModelParallelStrategy"
        ):
            raise MisconfigurationException(
                f"`AdaptiveGradientClipping` does not support `{type(trainer.strategy).__name__}`: each rank holds"
                " only a shard of the gradients, so its local norm is not the total norm. Use DDP, or clip with"
                " the strategy's own sharded clipping."
            )
        if trainer.gradient_clip_val and not self._warned_gradient_clip_val:
            self._warned_gradient_clip_val = True
            rank_zero_warn(
                f"`AdaptiveGradientClipping` is used together with `Trainer(gradient_clip_val="
                f"{trainer.gradient_clip_val})`: Lightning clips again after this callback. Set one of them only."
            )
        self._names = {id(p): name for name, p in pl_module.named_parameters()}

    @staticmethod
    def _optimizer_index(trainer: pl.Trainer, optimizer: Optimizer) -> int:
        raw = getattr(optimizer, "_optimizer", optimizer)
        return next((i for i, opt in enumerate(trainer.optimizers) if opt is raw), 0)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        idx = self._optimizer_index(trainer, optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        self.num_steps += 1
        pre = total_grad_norm(params)
        has_scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
        if has_scaler and getattr(optimizer, "_step_supports_amp_scaling", False):
            raise RuntimeError(
                f"`AdaptiveGradientClipping` cannot clip for {type(optimizer).__name__}: it unscales gradients inside"
                " `step()` (a fused optimizer?), so they are still scaled by the GradScaler here."
            )
        if self.skip_nonfinite and not has_scaler:
            if bool(any_across_ranks(~torch.isfinite(pre))):  # the one host sync of the step
                self._skip(trainer, pl_module, optimizer, idx, params, pre)
                return
            self._consecutive_nonfinite[idx] = 0
        post, threshold = self._clip(idx, params, pre)
        clipped = post < pre
        self._clipped_total = self._clipped_total + clipped.long()
        self._record(trainer, pl_module, idx, pre, post, threshold, clipped, torch.zeros_like(clipped))

    def _clip(self, idx: int, params: list[Tensor], pre: Tensor) -> tuple[Tensor, Tensor]:
        if self.strategy == "value":
            clip_grad_value_(params, self.clip_value)
            return total_grad_norm(params), torch.full_like(pre, self.clip_value)
        if self.strategy == "agc":
            named = [(self._names.get(id(p), ""), p) for p in params]
            adaptive_grad_clip_(named, self.clip_factor, self.eps, exclude=self.exclude)
            return total_grad_norm(params), torch.full_like(pre, self.clip_factor)
        if self.strategy == "norm":
            threshold = torch.full_like(pre, self.max_norm)
        else:
            clipper = self._clippers.get(idx)
            if clipper is None:
                clipper = self._clippers[idx] = self._new_clipper()
            threshold = clipper.step(pre)
        return clip_grads_with_norm_(params, threshold, pre), threshold

    def _skip(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: Optimizer,
        idx: int,
        params: list[Tensor],
        pre: Tensor,
    ) -> None:
        self.num_skipped_steps += 1
        consecutive = self._consecutive_nonfinite.get(idx, 0) + 1
        self._consecutive_nonfinite[idx] = consecutive
        if consecutive >= self.max_consecutive_nonfinite:
            names = nonfinite_parameter_names((self._names.get(id(p), "<unnamed>"), p) for p in params)
            raise RuntimeError(
                f"{consecutive} consecutive optimizer steps (`max_consecutive_nonfinite`="
                f"{self.max_consecutive_nonfinite}) of optimizer {idx} had non-finite gradients, at global step"
                f" {trainer.global_step}; {_culprits(names, ranks_with(~torch.isfinite(pre)), trainer)}."
            )
        discard_grads_(p for group in optimizer.param_groups for p in group["params"])
        self._let_lightning_clip_nothing(trainer)
        yes = torch.ones((), dtype=torch.bool, device=pre.device)
        self._record(
            trainer, pl_module, idx, pre, torch.zeros_like(pre), torch.full_like(pre, torch.nan), ~yes, yes
        )

    def _let_lightning_clip_nothing(self, trainer: pl.Trainer) -> None:
        # After a skip every gradient is None, and `Trainer(gradient_clip_algorithm="value")` (or a
        # `configure_gradient_clipping` that clips by value) would end the run: torch's `clip_grad_value_`
        # raises on an empty list of gradients. Clipping no gradient is a no-op, so the precision plugin's
        # `clip_gradients` is wrapped (once, on the first skip; undone at teardown) to return early then.
        plugin = trainer.precision_plugin
        if "clip_gradients" in vars(plugin):
            return
        original = plugin.clip_gradients

        def clip_gradients(optimizer: Optimizer, *args: Any, **kwargs: Any) -> None:
            if any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
                original(optimizer, *args, **kwargs)

        setattr(plugin, "clip_gradients", clip_gradients)  # noqa: B010 - an instance attribute, on purpose
        self._wrapped_plugin = plugin

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        plugin, self._wrapped_plugin = self._wrapped_plugin, None
        if plugin is not None and "clip_gradients" in vars(plugin):
            delattr(plugin, "clip_gradients")

    def _record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        idx: int,
        pre: Tensor,
        post: Tensor,
        threshold: Tensor,
        clipped: Tensor,
        skipped: Tensor,
    ) -> None:
        self.last_record = ClipRecord(trainer.global_step, idx, pre, post, threshold, clipped, skipped)
        interval = resolve_interval(trainer, self.log_every_n_steps)
        if not is_logging_step(trainer, interval):
            return
        steps, clipped_before = self._logged_at
        fraction = (self._clipped_total - clipped_before) / max(self.num_steps - steps, 1)
        self._logged_at = (self.num_steps, self._clipped_total)
        suffix = f"/optimizer_{idx}" if len(trainer.optimizers) > 1 else ""
        values: dict[str, Tensor | float] = {
            "grad_clip/threshold": threshold,
            "grad_clip/pre_clip_norm": pre,
            "grad_clip/post_clip_norm": post,
            "grad_clip/clipped_fraction": torch.as_tensor(fraction, dtype=torch.float32),
            "grad_clip/skipped_steps": float(self.num_skipped_steps),
        }
        if self.strategy == "zscore" and bool(torch.isinf(threshold)):  # a read on logging steps only
            del values["grad_clip/threshold"]  # ZClip's warm-up: no threshold in force yet
        log_step_metrics(trainer, pl_module, {key + suffix: value for key, value in values.items()}, interval)

    @override
    def state_dict(self) -> dict[str, Any]:
        steps, clipped_before = self._logged_at
        return {
            "num_steps": self.num_steps,
            "num_skipped_steps": self.num_skipped_steps,
            "num_clipped_steps": self.num_clipped_steps,
            "logged_at": [steps, int(clipped_before)],
            "consecutive_nonfinite": dict(self._consecutive_nonfinite),
            "clippers": {idx: clipper.state_dict() for idx, clipper in self._clippers.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_steps = int(state_dict["num_steps"])
        self.num_skipped_steps = int(state_dict["num_skipped_steps"])
        self._clipped_total = int(state_dict["num_clipped_steps"])
        steps, clipped_before = state_dict["logged_at"]
        self._logged_at = (int(steps), int(clipped_before))
        self._consecutive_nonfinite = {int(k): int(v) for k, v in state_dict["consecutive_nonfinite"].items()}
        self._clippers = {}
        for idx, clipper_state in state_dict["clippers"].items():
            clipper = self._new_clipper()
            clipper.load_state_dict(clipper_state)
            self._clippers[int(idx)] = clipper


def _culprits(names: list[str], ranks: list[int], trainer: pl.Trainer) -> str:
    """Where the non-finite gradients were: this rank's parameters, or the other ranks that held them."""
    here = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
    if names:
        return f"parameters with non-finite gradients{here}: {names}"
    others = [rank for rank in ranks if rank != trainer.global_rank]
    if others:
        return f"none on this rank ({trainer.global_rank}): they came from rank(s) {others}"
    return f"parameters with non-finite gradients{here}: none found"
