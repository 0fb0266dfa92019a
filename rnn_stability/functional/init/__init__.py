"""Gate-aware initialisation of recurrent modules: every function works per gate block, layer and direction."""

from rnn_stability.functional.init.chrono import chrono_
from rnn_stability.functional.init.forget_bias import forget_gate_bias_
from rnn_stability.functional.init.gates import (
    GATE_NAMES,
    gate_block,
    gate_blocks,
    layer_weights,
    recurrent_kind,
    recurrent_modules,
)
from rnn_stability.functional.init.identity import identity_
from rnn_stability.functional.init.orthogonal import orthogonal_
from rnn_stability.functional.init.scheme import SCHEMES, check_scheme, init_rnn_
from rnn_stability.functional.init.xavier import xavier_normal_, xavier_uniform_

__all__ = [
    "GATE_NAMES",
    "SCHEMES",
    "check_scheme",
    "chrono_",
    "forget_gate_bias_",
    "gate_block",
    "gate_blocks",
    "identity_",
    "init_rnn_",
    "layer_weights",
    "orthogonal_",
    "recurrent_kind",
    "recurrent_modules",
    "xavier_normal_",
    "xavier_uniform_",
]
