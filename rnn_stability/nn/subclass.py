"""Classes that put our recurrent machinery beneath a foreign subclass of torch's LSTM / GRU / cells.

A library's `class LSTM(nn.LSTM)` with its own methods (pytorch-forecasting's `handle_no_encoding`,
`init_hidden_state`, a `forward` that packs sequences and calls `super().forward`) becomes
`class LSTM(TheirLSTM, rnn_stability.nn.LSTM)`: its methods and attributes stay, and its `super().forward`
reaches ours, which is torch's own forward when the options are off.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

__all__ = ["parametrized_class", "stable_subclass"]

_CACHE: dict[tuple[type, type], type] = {}


def _new_instance(origin: type, ours: type) -> nn.Module:
    """Unpickling / deep-copy constructor of an instance of `stable_subclass(origin, ours)`."""
    cls = stable_subclass(origin, ours)
    return cls.__new__(cls)


def _reduce_ex(self: nn.Module, protocol: Any) -> tuple[Any, ...]:
    # The class is built at run time, so it cannot be pickled by reference: pickle the recipe instead.
    cls = type(self)
    return _new_instance, (cls._rnn_stability_origin, cls._rnn_stability_ours), self.__getstate__()  # type: ignore[attr-defined]


def stable_subclass(origin: type[nn.Module], ours: type[nn.Module]) -> type[nn.Module]:
    """The class `origin` with `ours` beneath it in the method resolution order (built once, then cached).

    Args:
        origin: a subclass of one of torch's recurrent classes (e.g. `pytorch_forecasting`'s `LSTM`).
        ours: the matching class of `rnn_stability.nn` (`LSTM`, `GRU`, `LSTMCell`, `GRUCell`).

    Returns:
        A class named like `origin`, deriving from both; instances pickle and deep-copy.

    Raises:
        TypeError: if the two classes cannot be combined (conflicting layouts or method orders).

    Examples:
        >>> from rnn_stability.nn import LSTM
        >>> class Custom(nn.LSTM):
        ...     def hello(self):
        ...         return "hello"
        >>> cls = stable_subclass(Custom, LSTM)
        >>> [c.__name__ for c in cls.__mro__[:4]], cls(2, 3).hello()
        (['Custom', 'Custom', 'LSTM', 'StackedRNNMixin'], 'hello')
    """
    key = (origin, ours)
    if key not in _CACHE:
        namespace = {
            "__module__": __name__,
            # Not `origin`'s own path, so pickling the class itself fails instead of loading `origin`.
            "__qualname__": f"stable_subclass.<{origin.__module__}.{origin.__qualname__}>",
            "__doc__": origin.__doc__,
            "__reduce_ex__": _reduce_ex,
            "_rnn_stability_origin": origin,
            "_rnn_stability_ours": ours,
        }
        try:
            cls = types.new_class(origin.__name__, (origin, ours), exec_body=lambda ns: ns.update(namespace))
        except TypeError as err:
            raise TypeError(f"cannot put {ours.__qualname__} beneath {origin.__qualname__}: {err}") from err
        _CACHE[key] = cls
    return _CACHE[key]


def parametrized_class(parametrized: type[nn.Module], base: type[nn.Module]) -> type[nn.Module]:
    """A copy of torch's `Parametrized<Name>` class (its properties and hooks) re-based on `base`.

    `torch.nn.utils.parametrize` replaces a module's class by a generated subclass that holds one property per
    parametrized tensor; converting such a module needs the same properties on top of the new class.
    """
    skip = {"__dict__", "__weakref__", "__module__", "__qualname__"}
    namespace = {k: v for k, v in parametrized.__dict__.items() if k not in skip}
    return types.new_class(f"Parametrized{base.__name__}", (base,), exec_body=lambda ns: ns.update(namespace))
