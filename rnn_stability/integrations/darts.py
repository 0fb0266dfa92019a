"""darts: `RNNModel` / `BlockRNNModel` whose LSTM or GRU is ours, surviving `save` / `load`.

darts builds its LightningModule inside `fit`, and `load` rebuilds it from the module's class and its
hyper-parameters. `StableRNNModel` and `StableBlockRNNModel` take `stable_rnn` (`convert_rnn`'s arguments)
and build `StableRNNModule` / `StableBlockRNNModule`, which convert in their constructor; darts records that
class, so `load` gets it back. darts' safe loader only unpickles allow-listed classes: call
`allow_safe_loading()` once before `load` (ours, including the callbacks given in `pl_trainer_kwargs`).
"""

from __future__ import annotations

from typing import Any

from darts.models import BlockRNNModel, RNNModel
from darts.models.forecasting.block_rnn_model import _BlockRNNModule
from darts.models.forecasting.rnn_model import _RNNModule
from darts.utils.serialization import add_safe_globals

from rnn_stability.callbacks import (
    AdaptiveGradientClipping,
    ClipRecord,
    GradientFlowMonitor,
    GradientNormMonitor,
    LossSpikeRecovery,
    RNNInitializer,
    StableRNN,
)
from rnn_stability.functional.clipping import PercentileClipper, ZScoreClipper
from rnn_stability.functional.flow_statistics import FlowStatistics
from rnn_stability.functional.loss_spikes import LossSpikeDetector
from rnn_stability.integrations.stable_rnn_mixin import StableRNNMixin

__all__ = [
    "SAFE_GLOBALS",
    "StableBlockRNNModel",
    "StableBlockRNNModule",
    "StableRNNModel",
    "StableRNNModule",
    "allow_safe_loading",
]


class StableRNNModule(StableRNNMixin, _RNNModule):
    """darts' `RNNModel` network, converted by `stable_rnn` when built (also when `load` rebuilds it)."""


class StableBlockRNNModule(StableRNNMixin, _BlockRNNModule):
    """darts' `BlockRNNModel` network, converted by `stable_rnn` when built (also when `load` rebuilds it)."""


def _use_stable_module(
    model: RNNModel | BlockRNNModel, module: type, stable_rnn: dict[str, Any] | None
) -> None:
    # darts builds `rnn_type_or_module(**pl_module_params, ...)` when it is a class (its custom-module path).
    name = model.rnn_type_or_module
    if name not in ("LSTM", "GRU"):
        raise ValueError(f"{type(model).__name__} takes `model` as 'LSTM' or 'GRU', got {name!r}")
    model.pl_module_params = {**model.pl_module_params, "name": name, "stable_rnn": stable_rnn}
    model.rnn_type_or_module = module


class StableRNNModel(RNNModel):
    """darts' `RNNModel` with our LSTM / GRU: `stable_rnn={"layer_norm": True}` and otherwise the same.

    Takes `RNNModel`'s arguments (`input_chunk_length`, `hidden_dim`, `pl_trainer_kwargs`, ...), with `model`
    `"LSTM"` (the default here) or `"GRU"`, and:

    Args:
        stable_rnn: `convert_rnn`'s arguments, e.g. `{"layer_norm": True}`; `None`: every option off.

    Raises:
        ValueError: if `model` is not `"LSTM"` or `"GRU"` (torch's plain `RNN` has no counterpart of ours).
    """

    def __init__(
        self,
        input_chunk_length: int,
        model: str = "LSTM",
        hidden_dim: int = 25,
        n_rnn_layers: int = 1,
        dropout: float = 0.0,
        training_length: int = 24,
        stable_rnn: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            input_chunk_length,
            model=model,
            hidden_dim=hidden_dim,
            n_rnn_layers=n_rnn_layers,
            dropout=dropout,
            training_length=training_length,
            **kwargs,
        )
        _use_stable_module(self, StableRNNModule, stable_rnn)


class StableBlockRNNModel(BlockRNNModel):
    """darts' `BlockRNNModel` with our LSTM / GRU: `stable_rnn={"layer_norm": True}` and otherwise the same.

    Takes `BlockRNNModel`'s arguments (`input_chunk_length`, `output_chunk_length`, `hidden_dim`, ...), with
    `model` `"LSTM"` (the default here) or `"GRU"`, and:

    Args:
        stable_rnn: `convert_rnn`'s arguments, e.g. `{"layer_norm": True}`; `None`: every option off.

    Raises:
        ValueError: if `model` is not `"LSTM"` or `"GRU"` (torch's plain `RNN` has no counterpart of ours).
    """

    def __init__(
        self,
        input_chunk_length: int,
        output_chunk_length: int,
        output_chunk_shift: int = 0,
        model: str = "LSTM",
        hidden_dim: int = 25,
        n_rnn_layers: int = 1,
        hidden_fc_sizes: list[int] | None = None,
        dropout: float = 0.0,
        activation: str = "ReLU",
        stable_rnn: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            input_chunk_length,
            output_chunk_length,
            output_chunk_shift=output_chunk_shift,
            model=model,
            hidden_dim=hidden_dim,
            n_rnn_layers=n_rnn_layers,
            hidden_fc_sizes=hidden_fc_sizes,
            dropout=dropout,
            activation=activation,
            **kwargs,
        )
        _use_stable_module(self, StableBlockRNNModule, stable_rnn)


#: What darts' safe loader must accept to load a model of ours, or one trained with our callbacks.
SAFE_GLOBALS: list[type] = [
    StableRNNModel,
    StableBlockRNNModel,
    StableRNNModule,
    StableBlockRNNModule,
    StableRNN,
    RNNInitializer,
    GradientNormMonitor,
    AdaptiveGradientClipping,
    ClipRecord,
    PercentileClipper,
    ZScoreClipper,
    GradientFlowMonitor,
    FlowStatistics,
    LossSpikeRecovery,
    LossSpikeDetector,
]


def allow_safe_loading() -> None:
    """Allow-list `SAFE_GLOBALS` in darts' safe loader (`darts.utils.serialization.add_safe_globals`).

    Call once before `load` / `load_from_checkpoint`; calling again adds nothing new.
    """
    from darts.utils.serialization import get_safe_globals

    present = {id(entry) for entry in get_safe_globals()}
    add_safe_globals([cls for cls in SAFE_GLOBALS if id(cls) not in present])
