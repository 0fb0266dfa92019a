"""Swap torch's recurrent modules inside any model for ours, keeping weights, device, dtype and mode."""

from __future__ import annotations

import warnings

from torch import nn

from rnn_stability.nn.cells import GRUCell, LSTMCell
from rnn_stability.nn.gru import GRU
from rnn_stability.nn.lstm import LSTM
from rnn_stability.nn.stacked import check_flag

__all__ = ["convert_rnn"]

_REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.LSTM: LSTM,
    nn.GRU: GRU,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
    LSTM: LSTM,
    GRU: GRU,
    LSTMCell: LSTMCell,
    GRUCell: GRUCell,
}


def _converted(module: nn.Module, layer_norm: bool, residual: bool) -> nn.Module:
    replacement = _REPLACEMENTS[type(module)]
    weight = next(module.parameters())
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: nn.Module
    if isinstance(module, nn.RNNBase):
        options = dict(
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
        if module.proj_size:
            options["proj_size"] = module.proj_size
        with warnings.catch_warnings():
            # The original already warned about dropout with a single layer.
            warnings.simplefilter("ignore", UserWarning)
            new = replacement(
                module.input_size,
                module.hidden_size,
                **options,
                **factory,
                layer_norm=layer_norm,
                residual=residual,
            )
    else:
        assert isinstance(module, nn.RNNCellBase)
        new = replacement(
            module.input_size, module.hidden_size, module.bias, **factory, layer_norm=layer_norm
        )
    incompatible = new.load_state_dict(module.state_dict(), strict=False)
    # Missing keys are the fresh layer-norm parameters; unexpected ones can only be layer-norm parameters of
    # one of ours converted with `layer_norm=False` (dropped on purpose).
    unmapped = [k for k in incompatible.unexpected_keys if not k.startswith("layer_norm_")]
    if unmapped:
        raise RuntimeError(f"convert_rnn could not map the parameters {unmapped} of {module}")
    new.train(module.training)
    return new


def convert_rnn(module: nn.Module, *, layer_norm: bool = False, residual: bool = False) -> nn.Module:
    """Replace every `torch.nn.LSTM` / `GRU` / `LSTMCell` / `GRUCell` in `module` by ours.

    Each replacement gets the original's hyper-parameters, weights (copied), device, dtype and train/eval
    mode, plus the requested options (cells only take `layer_norm`). `module` itself is converted if it is
    one of these classes. Our own modules are rebuilt with the requested options (their layer-norm
    parameters are kept when the new module has layer norm, dropped otherwise); subclasses of torch's classes are left alone, since their own
    `forward` may differ. With both options off, the converted model's outputs equal the original's exactly.

    Args:
        module: any model (changed in place, except when it is itself a recurrent module).
        layer_norm: turn on layer normalisation (Ba, Kiros & Hinton (2016), "Layer Normalization").
        residual: turn on residual connections between width-preserving layers.

    Returns:
        The converted model (`module` itself unless `module` was replaced).

    Raises:
        TypeError: if `module` is not an `nn.Module` or an option is not a bool.

    Examples:
        >>> model = nn.Sequential(nn.LSTM(3, 4))
        >>> model = convert_rnn(model, layer_norm=True)
        >>> type(model[0]).__module__, model[0].layer_norm
        ('rnn_stability.nn.lstm', True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    check_flag("layer_norm", layer_norm)
    check_flag("residual", residual)
    if type(module) in _REPLACEMENTS:
        return _converted(module, layer_norm, residual)
    for name, child in list(module.named_children()):
        converted = convert_rnn(child, layer_norm=layer_norm, residual=residual)
        if converted is not child:
            setattr(module, name, converted)
    return module
