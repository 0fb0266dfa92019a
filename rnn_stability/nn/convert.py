"""Turn torch's recurrent modules inside any model into ours, in place, keeping the model the same model."""

from __future__ import annotations

import fnmatch
import inspect
import logging
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from rnn_stability.nn.cells import GRUCell, LSTMCell
from rnn_stability.nn.gru import GRU
from rnn_stability.nn.lstm import LSTM
from rnn_stability.nn.subclass import parametrized_class, stable_subclass

__all__ = ["check_conversion_arguments", "convert_rnn", "convert_rnn_modules"]

log = logging.getLogger(__name__)

_OURS: dict[type[nn.Module], type[nn.Module]] = {
    nn.LSTM: LSTM,
    nn.GRU: GRU,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
}
_RECURRENT = tuple(_OURS)
# torch's constructor arguments: read from the module being converted, never conversion options.
_TORCH_ARGUMENTS = set(inspect.signature(nn.RNNBase.__init__).parameters) - {"self", "mode"}


def _torch_class(module: nn.Module) -> type[nn.Module]:
    return next(cls for cls in _OURS if isinstance(module, cls))


def _patterns(name: str, value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Iterable) else None
    if items is None or not all(isinstance(p, str) for p in items):
        raise TypeError(
            f"`{name}` must be a module name, an fnmatch pattern or a list of them, got {value!r}"
        )
    return items


def check_conversion_arguments(
    include: str | Iterable[str] | None, exclude: str | Iterable[str] | None, options: dict[str, Any]
) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """Validate `convert_rnn`'s arguments without converting anything; return the patterns as tuples.

    Raises:
        TypeError: for non-string patterns, an unknown option, one of torch's constructor arguments, or an
            option of the wrong type.
        ValueError: for an option value our constructors reject.
    """
    included = _patterns("include", include)
    excluded = _patterns("exclude", exclude) or ()
    _check_options(options)
    return included, excluded


def _check_options(options: dict[str, Any]) -> None:
    taken = sorted(set(options) & _TORCH_ARGUMENTS)
    if taken:
        raise TypeError(
            f"{taken} are torch constructor arguments, read from each converted module; convert_rnn only takes "
            "our options (e.g. `layer_norm`, `residual`)"
        )
    # Our constructors check every option: build each class once on the meta device (no memory, no RNG).
    for ours in _OURS.values():
        ours(1, 1, device="meta", **_accepted(ours, options))


def _accepted(ours: type[nn.Module], options: dict[str, Any]) -> dict[str, Any]:
    """`options` minus those `ours` has no parameter for (the cells take no `residual`)."""
    parameters = inspect.signature(ours.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in parameters}


def _blueprint(
    module: nn.Module, cls: type[nn.Module], dtype: torch.dtype, options: dict[str, Any]
) -> nn.Module:
    """`cls` built with `module`'s hyper-parameters on the meta device, without touching any RNG."""
    if isinstance(module, nn.RNNBase):
        args: dict[str, Any] = dict(
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
        if module.proj_size:
            args["proj_size"] = module.proj_size
    else:
        args = {"bias": module.bias}
    if cls not in _RECURRENT:
        args.update(_accepted(cls, options))
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # The original already warned about dropout with a single layer.
        warnings.simplefilter("ignore", UserWarning)
        return cls(module.input_size, module.hidden_size, **args, device="meta", dtype=dtype)


def _target_class(module: nn.Module, ours: type[nn.Module]) -> type[nn.Module]:
    cls = type(module)
    parametrized = parametrize.is_parametrized(module)
    origin: type[nn.Module] = cls.__bases__[0] if parametrized else cls  # type: ignore[assignment]
    if issubclass(origin, ours):
        return cls  # ours already, a subclass of ours, or converted before
    target = ours if origin is _torch_class(module) else stable_subclass(origin, ours)
    return parametrized_class(cls, target) if parametrized else target


def _fresh_children(
    module: nn.Module, blueprint: nn.Module, device: torch.device, trainable: bool
) -> dict[str, nn.Module]:
    """The blueprint's submodules (our layer-norm parameters) that `module` lacks, materialised on `device`.

    A submodule `module` already holds with the same type and shapes is kept, with its trained values.
    """
    fresh = {}
    for name, child in blueprint.named_children():
        old = module._modules.get(name)
        if old is not None and type(old) is type(child):
            shapes = {k: v.shape for k, v in old.state_dict().items()}
            if shapes == {k: v.shape for k, v in child.state_dict().items()}:
                continue
        child.to_empty(device=device)
        rng_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            for sub in child.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
        child.train(module.training)
        child.requires_grad_(trainable)
        fresh[name] = child
    return fresh


def _convert_one(module: nn.Module, options: dict[str, Any]) -> None:
    torch_cls = _torch_class(module)
    ours = _OURS[torch_cls]
    target = _target_class(module, ours)
    parameters = list(module.parameters())
    device, dtype = parameters[0].device, parameters[0].dtype
    blueprint = _blueprint(module, ours, dtype, options)
    plain = _blueprint(module, torch_cls, dtype, options)
    attributes = {k: blueprint.__dict__[k] for k in blueprint.__dict__.keys() - plain.__dict__.keys()}
    # New parameters of a fully frozen module stay frozen, so that a frozen encoder does not start training.
    trainable = any(p.requires_grad for p in parameters)
    fresh = _fresh_children(module, blueprint, device, trainable)
    stale = [
        name
        for name in module._modules
        if isinstance(module, ours)
        and name.startswith(("layer_norm", "batch_norm"))
        and name not in blueprint._modules
    ]
    # Everything is prepared: only now change the module, so a failure above leaves it untouched.
    module.__class__ = target
    module.__dict__.update(attributes)
    for name in stale:
        del module._modules[name]
    for name, child in fresh.items():
        setattr(module, name, child)


def convert_rnn_modules(
    module: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    **options: Any,
) -> list[str]:
    """`convert_rnn`, returning the names of the modules it converted (`""` for `module` itself).

    A module reachable under several names (shared) is converted once, listed under its first name.
    Takes the same arguments as `convert_rnn`.

    Examples:
        >>> lstm = nn.LSTM(3, 4)
        >>> convert_rnn_modules(nn.ModuleDict({"a": lstm, "b": lstm, "c": nn.GRU(3, 4)}), exclude="c")
        ['a']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    included, excluded = check_conversion_arguments(include, exclude, options)
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        if isinstance(sub, _RECURRENT):
            names.setdefault(id(sub), []).append(name)
            modules[id(sub)] = sub

    def matches(key: int, patterns: Iterable[str]) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for n in names[key] for p in patterns)

    selected = [
        key for key in modules if (included is None or matches(key, included)) and not matches(key, excluded)
    ]
    for pattern in included or ():
        if not any(fnmatch.fnmatchcase(n, pattern) for all_names in names.values() for n in all_names):
            warnings.warn(
                f"convert_rnn: `include` pattern {pattern!r} matches no recurrent module", stacklevel=3
            )
    if not modules:
        warnings.warn(
            f"convert_rnn: {type(module).__name__} holds no torch.nn.LSTM, GRU, LSTMCell or GRUCell; nothing "
            "was converted",
            stacklevel=3,
        )
    elif not selected:
        warnings.warn("convert_rnn: `include` / `exclude` left no recurrent module to convert", stacklevel=3)
    for key in selected:
        try:
            _convert_one(modules[key], options)
        except (TypeError, ValueError, RuntimeError) as err:
            raise type(err)(f"convert_rnn could not convert {names[key][0] or 'the model'!r}: {err}") from err
    converted = [names[key][0] for key in selected]
    log.info("convert_rnn converted %d module(s): %s", len(converted), ", ".join(repr(n) for n in converted))
    return converted


def convert_rnn(
    module: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    **options: Any,
) -> nn.Module:
    """Turn every `torch.nn.LSTM` / `GRU` / `LSTMCell` / `GRUCell` in `module` into ours, in place.

    Each module keeps its identity: its class is swapped (to ours, or for a subclass of torch's class, such as
    pytorch-forecasting's `LSTM`, to a class built on both, with our machinery beneath the subclass's own
    methods), and its parameters stay the very same tensors. So a module shared by two parents stays shared,
    and `requires_grad` flags, hooks, parametrizations, train/eval mode, device, dtype and optimizer
    references all survive. New layer-norm parameters are created on the module's device and dtype (frozen
    if all its parameters are) without drawing from any random generator, so conversion with every option
    off changes neither outputs nor a training run's random stream. Our own modules are reconfigured: their
    layer-norm parameters are kept when the new options still have them, dropped otherwise. The names of
    the converted modules are logged at INFO level (`convert_rnn_modules` returns them), and a warning is
    raised when nothing is converted.

    Args:
        module: any model.
        include: module names (as in `named_modules`, `""` for `module` itself) or fnmatch patterns; only
            matching recurrent modules are converted. `None` (default): all.
        exclude: names or patterns of recurrent modules to leave alone (applied after `include`).
        **options: our constructors' keyword options, e.g. `layer_norm` (`True` or a variant name:
            `"scaled"`, `"separate"`, `"joint"`, `"recurrent"`; see `rnn_stability.nn.LSTM`), `residual` and
            the regularisers `weight_dropout`, `recurrent_dropout`, `input_dropout`, `zoneout`, `batch_norm`
            (cells take only the options they have: `layer_norm`, `zoneout`). Reconverting to another
            variant keeps the gains both have (`layer_norm_hh_*` among `"recurrent"`, `"separate"` and
            `"scaled"`) and makes fresh ones for the rest.

    Returns:
        `module`, converted.

    Raises:
        TypeError: if `module` is not an `nn.Module`, `include` / `exclude` are not strings, an option is
            unknown, one of torch's constructor arguments or of the wrong type.
        ValueError: for an option value our constructors reject.

    Examples:
        >>> model = nn.Sequential(nn.LSTM(3, 4))
        >>> model = convert_rnn(model, layer_norm=True)
        >>> type(model[0]).__module__, model[0].layer_norm, model[0].layer_norm_variant
        ('rnn_stability.nn.lstm', True, 'scaled')
    """
    convert_rnn_modules(module, include=include, exclude=exclude, **options)
    return module
