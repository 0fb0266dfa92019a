"""The `rnn-stability demo` command: a vanilla and a stable LSTM on the adding problem, side by side.

Run it with `rnn-stability demo` (or `python -m rnn_stability demo`); from Python::

    from rnn_stability.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(seq_len=100, steps=600))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rnn_stability.demo.config import CELLS, MEAN_BASELINE_MSE, SOLVED_MSE, DemoConfig

if TYPE_CHECKING:
    from rnn_stability.demo.app import run_demo
    from rnn_stability.demo.runner import DemoError
    from rnn_stability.demo.worker import RunResult

__all__ = ["CELLS", "MEAN_BASELINE_MSE", "SOLVED_MSE", "DemoConfig", "DemoError", "RunResult", "run_demo"]

# Training imports torch and Lightning; the command line imports only the configuration until it trains,
# so that `rnn-stability demo --help` and option errors answer at once.
_LAZY = {
    "run_demo": "rnn_stability.demo.app",
    "DemoError": "rnn_stability.demo.runner",
    "RunResult": "rnn_stability.demo.worker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
