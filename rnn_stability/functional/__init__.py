"""Pure tensor functions: gradient norms, clipping strategies, gate-aware initialisation, gradient flow.

Nothing in this package imports Lightning; the callbacks in `rnn_stability.callbacks` are thin
shells over these functions, and each is usable from a plain PyTorch training loop. Every name listed in
the `__all__` of the modules below is re-exported here.
"""

from rnn_stability.functional import clipping, grad_norm, init, norm_groups
from rnn_stability.functional import flow_statistics as _flow_statistics_module
from rnn_stability.functional import gradient_flow as _gradient_flow_module
from rnn_stability.functional import loss_spikes as _loss_spikes_module
from rnn_stability.functional.clipping import *  # noqa: F403
from rnn_stability.functional.flow_statistics import *  # noqa: F403
from rnn_stability.functional.grad_norm import *  # noqa: F403
from rnn_stability.functional.gradient_flow import *  # noqa: F403
from rnn_stability.functional.init import *  # noqa: F403
from rnn_stability.functional.loss_spikes import *  # noqa: F403
from rnn_stability.functional.norm_groups import *  # noqa: F403

__all__ = [
    *grad_norm.__all__,
    *norm_groups.__all__,
    *clipping.__all__,
    *init.__all__,
    *_gradient_flow_module.__all__,
    *_flow_statistics_module.__all__,
    *_loss_spikes_module.__all__,
]
