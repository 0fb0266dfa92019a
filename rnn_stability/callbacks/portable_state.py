"""What a callback keeps when pickled or deep-copied: its settings and counters, not the run it is attached to.

Lightning attaches the LightningModule's `log` / `log_dict` to every callback, and our callbacks hold hooks,
the trainer and parameter ids while training, so a plain pickle of a callback that has run drags the whole
model along (and its classes must then load too: darts' safe loader refuses them). Libraries pickle or copy
callbacks: darts' `save` pickles the `pl_trainer_kwargs` it was given, neuralforecast's `fit` deep-copies
the models with their trainer arguments.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LIGHTNING_ATTACHED", "portable_state"]

# Set on every callback by Lightning's callback connector, bound to the LightningModule.
LIGHTNING_ATTACHED = ("log", "log_dict")


def portable_state(callback: object, run_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """`callback.__dict__` without what Lightning attached, with the run-time attributes at their fresh values.

    Args:
        callback: any callback.
        run_state: attributes that only mean something during the run (hooks, references into the model or
            trainer, ids of parameters), mapped to the values they have before `setup`.

    Examples:
        >>> class Counter:
        ...     def __init__(self):
        ...         self.steps, self._handles = 3, ["hook"]
        >>> counter = Counter()
        >>> counter.log = print
        >>> portable_state(counter, {"_handles": []})
        {'steps': 3, '_handles': []}
    """
    state = {k: v for k, v in vars(callback).items() if k not in LIGHTNING_ATTACHED}
    state.update(run_state or {})
    return state
