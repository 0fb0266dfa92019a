"""Swap a LightningModule's recurrent modules for ours when training starts: `Trainer(callbacks=[...])` only."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from rnn_stability.callbacks.portable_state import portable_state
from rnn_stability.nn.convert import check_conversion_arguments, convert_rnn_modules
from rnn_stability.nn.layer_norm import LayerNormVariant, check_layer_norm

__all__ = ["StableRNN"]


class StableRNN(Callback):
    r"""Convert the model's `torch.nn.LSTM` / `GRU` / cells to ours (layer norm, residuals) in `setup`.

    Makes an existing model stable without touching its code, including models a library builds for you
    (darts, neuralforecast, pytorch-forecasting: see the integrations guide). The conversion is
    `rnn_stability.nn.convert_rnn` (in place: parameters, sharing, hooks, `requires_grad` flags and
    subclasses' own methods kept; no random numbers drawn, so with every option off training is bit for bit
    the unconverted run). It runs in `setup`, which Lightning calls before `configure_optimizers`, before
    the strategy moves or wraps the model (DDP, FSDP) and before `Trainer.fit(ckpt_path=...)` restores the
    weights — so a resumed run loads its layer-norm parameters into the converted model. Every rank converts
    the same modules the same way.

    Idempotent: each `fit` / `validate` / `test` / `predict` calls `setup` again, which finds the modules
    already converted with these options and keeps them (trained layer-norm parameters included).

    Modules the LightningModule creates later (in `configure_model`) are not seen; a warning says so when
    the model holds no recurrent module at `setup`. A model saved by a library that rebuilds it from its
    class when loading needs the model to be converted at construction instead: use the adapters of
    `rnn_stability.integrations`.

    Args:
        layer_norm: turn on layer normalisation (Ba, Kiros & Hinton (2016), "Layer Normalization"): `True`
            (the default variant, `rnn_stability.nn.layer_norm.DEFAULT_LAYER_NORM`) or a variant name,
            `"scaled"`, `"separate"`, `"joint"` or `"recurrent"`, as the modules' `layer_norm` takes.
        residual: turn on residual connections between width-preserving layers (layers only).
        include: module names or fnmatch patterns (as in `named_modules`) to convert; `None`: all.
        exclude: module names or patterns to leave alone.
        **options: further options of our modules, passed to `convert_rnn` unchanged: the regularisers
            `weight_dropout`, `recurrent_dropout`, `input_dropout`, `zoneout` and `batch_norm` (see
            `rnn_stability.nn.LSTM`), e.g. `StableRNN(weight_dropout=0.5, input_dropout=0.2)` for AWD-LSTM.

    Attributes:
        converted: names of the modules converted by the last `setup`.

    Raises:
        TypeError: for an option of the wrong type, an unknown option or non-string patterns.
        ValueError: for an option value our modules reject.

    Examples:
        >>> import lightning.pytorch as pl
        >>> from torch import nn
        >>> class Model(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.rnn = nn.LSTM(3, 4)
        >>> model, callback = Model(), StableRNN(layer_norm=True)
        >>> callback.setup(pl.Trainer(logger=False), model, "fit")
        >>> callback.converted, model.rnn.layer_norm
        (['rnn'], True)
    """

    def __init__(
        self,
        layer_norm: bool | LayerNormVariant = False,
        residual: bool = False,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        **options: Any,
    ) -> None:
        layer_norm = check_layer_norm(layer_norm)
        self.options: dict[str, Any] = {"layer_norm": layer_norm, "residual": residual, **options}
        included, excluded = check_conversion_arguments(include, exclude, self.options)
        self.include = None if included is None else list(included)
        self.exclude = list(excluded)
        self.converted: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies (darts' `save`, neuralforecast's `fit`) leave the run behind.
        return portable_state(self)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.converted = convert_rnn_modules(
            pl_module, include=self.include, exclude=self.exclude, **self.options
        )
        if self.converted:
            options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
            rank_zero_info(f"StableRNN ({options}) converted: {', '.join(self.converted)}")
