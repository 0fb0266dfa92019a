"""Convert a model's recurrent modules in its constructor, from a `stable_rnn` hyper-parameter."""

from __future__ import annotations

from typing import Any

from rnn_stability.nn.convert import check_conversion_arguments, convert_rnn_modules

__all__ = ["StableRNNMixin"]


class StableRNNMixin:
    """Put first among a model's bases: its constructor takes `stable_rnn` and converts the model it built.

    `stable_rnn` holds `convert_rnn`'s arguments (`layer_norm`, `residual`, `include`, `exclude`, ...) as a
    dict of plain values. Lightning's `save_hyperparameters`, which the model's own constructor calls, records
    it with the model's other arguments, so `load_from_checkpoint` (and every library loader that rebuilds a
    model from its hyper-parameters) builds the converted model before loading the weights. `None` or `{}`
    converts with every option off: the model computes what it did before, bit for bit.

    Args:
        *args: the model's own arguments.
        stable_rnn: `convert_rnn`'s keyword arguments; checked before the model is built.
        **kwargs: the model's own keyword arguments.

    Attributes:
        stable_rnn_converted: names of the modules converted.

    Raises:
        TypeError: if `stable_rnn` is not a dict, or holds an unknown option or a wrong type.
        ValueError: for an option value our modules reject.

    Examples:
        >>> import lightning.pytorch as pl
        >>> from torch import nn
        >>> class Model(pl.LightningModule):
        ...     def __init__(self, hidden_size: int = 4):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.rnn = nn.LSTM(3, hidden_size)
        >>> class StableModel(StableRNNMixin, Model):
        ...     pass
        >>> model = StableModel(hidden_size=5, stable_rnn={"layer_norm": True})
        >>> model.rnn.layer_norm, model.stable_rnn_converted, dict(model.hparams)
        (True, ['rnn'], {'hidden_size': 5, 'stable_rnn': {'layer_norm': True}})
    """

    def __init__(self, *args: Any, stable_rnn: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if stable_rnn is not None and not isinstance(stable_rnn, dict):
            raise TypeError(f"`stable_rnn` must be a dict of convert_rnn's arguments, got {stable_rnn!r}")
        options = dict(stable_rnn or {})
        include, exclude = options.pop("include", None), options.pop("exclude", None)
        check_conversion_arguments(include, exclude, options)
        super().__init__(*args, **kwargs)
        self.stable_rnn_converted = convert_rnn_modules(
            self,  # type: ignore[arg-type]
            include=include,
            exclude=exclude,
            **options,
        )
