"""The training recipes compared: torch's defaults, each of the library's tools alone, and the full recipe.

The full recipe is the one the documentation recommends (getting started, the demo): `rnn_stability.nn`
modules with `layer_norm=True`, chrono initialisation with `max_timescale` set to the task's longest
dependency, and AutoClip (`AdaptiveGradientClipping(strategy="percentile")`) with its non-finite-step guard.
Every recipe trains the same model size, data, optimizer, learning rate and number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L

__all__ = ["RECIPES", "Recipe", "available_recipes", "has_spike_recovery", "recipe_callbacks"]


@dataclass(frozen=True)
class Recipe:
    """One way of training.

    Args:
        name: key of the recipe.
        title: one line for the tables.
        implementation: `"torch"` (`torch.nn.LSTM`/`GRU`) or `"rnn_stability"`.
        layer_norm: layer-normalised recurrence (Ba, Kiros & Hinton 2016).
        init: chrono initialisation (Tallec & Ollivier 2018) through `RNNInitializer`.
        autoclip: AutoClip (Seetharaman et al. 2020) with the non-finite guard, through
            `AdaptiveGradientClipping`.
        trainer: extra `Trainer` arguments (Lightning's own clipping).
        spike_recovery: add `LossSpikeRecovery` (only where the library has it).
    """

    name: str
    title: str
    implementation: str = "torch"
    layer_norm: bool = False
    init: bool = False
    autoclip: bool = False
    trainer: dict[str, Any] = field(default_factory=dict)
    spike_recovery: bool = False


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("torch", "1 torch defaults, no clipping"),
        Recipe("lightning_clip", "2 Lightning `gradient_clip_val=1.0`", trainer={"gradient_clip_val": 1.0}),
        Recipe("init", "3 chrono init only (`RNNInitializer`)", init=True),
        Recipe("autoclip", "4 AutoClip + non-finite guard only", autoclip=True),
        Recipe("layer_norm", "5 layer norm only", implementation="rnn_stability", layer_norm=True),
        Recipe("full", "6 full recipe", implementation="rnn_stability", layer_norm=True, init=True, autoclip=True),
        Recipe("full_spike", "7 full recipe + `LossSpikeRecovery`", implementation="rnn_stability",
               layer_norm=True, init=True, autoclip=True, spike_recovery=True),
    )
}  # fmt: skip


def has_spike_recovery() -> bool:
    """Whether `rnn_stability.callbacks` has `LossSpikeRecovery` (recipe 7 runs only then)."""
    import rnn_stability.callbacks as callbacks

    return hasattr(callbacks, "LossSpikeRecovery")


def available_recipes() -> list[str]:
    """The recipe names this checkout can run, in table order."""
    return [name for name, r in RECIPES.items() if not r.spike_recovery or has_spike_recovery()]


def recipe_callbacks(recipe: Recipe, timescale: int, seed: int) -> list[L.Callback]:
    """The training-changing callbacks of `recipe` (with their documented defaults)."""
    import rnn_stability.callbacks as cbs

    callbacks: list[L.Callback] = []
    if recipe.init:
        callbacks.append(cbs.RNNInitializer(scheme="chrono", max_timescale=float(timescale), seed=seed))
    if (
        recipe.spike_recovery
    ):  # before the clipper, as its docstring asks (a dropped step is not counted twice)
        callbacks.append(cbs.LossSpikeRecovery())
    if recipe.autoclip:
        callbacks.append(cbs.AdaptiveGradientClipping(strategy="percentile"))
    return callbacks
