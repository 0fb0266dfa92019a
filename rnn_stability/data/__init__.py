"""Synthetic long-range tasks, generated on the fly (no downloads)."""

from rnn_stability.data.synthetic import adding_problem, copy_task

__all__ = ["adding_problem", "copy_task"]
