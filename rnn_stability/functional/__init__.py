"""Pure tensor functions: gradient norms, clipping strategies, gate-aware initialisation, gradient flow.

Nothing in this package imports Lightning; the callbacks in :mod:`rnn_stability.callbacks` are thin
shells over these functions, and each is usable from a plain PyTorch training loop.
"""

# --- gradient norms (issue 4) ---
from rnn_stability.functional.grad_norm import (
    foreach_norms,
    grad_norms,
    nonfinite_count,
    total_grad_norm,
    total_norm,
)

# --- clipping strategies (issue 4) ---

# --- gate-aware initialisation (issue 5) ---

# --- temporal gradient flow (issue 6) ---

__all__ = [
    "foreach_norms",
    "grad_norms",
    "nonfinite_count",
    "total_grad_norm",
    "total_norm",
]
