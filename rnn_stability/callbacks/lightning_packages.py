"""Type checks that recognise both Lightning package names: `lightning.pytorch` and `pytorch_lightning`.

The two are separate copies of the same code (darts and neuralforecast train with `pytorch_lightning`), so
an `isinstance` against one package's strategies or loggers misses the other's. Hooks are called by name,
so our callbacks themselves run under either.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["is_lightning_instance"]

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def is_lightning_instance(obj: Any, *paths: str) -> bool:
    """Whether `obj` is an instance of a class at one of `paths` in either Lightning package.

    Only packages already imported are looked at (an object of a package that was never imported cannot
    exist), so this never imports `pytorch_lightning` itself.

    Args:
        obj: any object, e.g. `trainer.strategy`.
        *paths: class paths relative to the package, e.g. `"strategies.FSDPStrategy"`.

    Examples:
        >>> from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy
        >>> is_lightning_instance(SingleDeviceStrategy("cpu"), "strategies.FSDPStrategy")
        False
        >>> is_lightning_instance(SingleDeviceStrategy("cpu"), "strategies.SingleDeviceStrategy")
        True
    """
    classes: list[type] = []
    for package in _PACKAGES:
        if package not in sys.modules:
            continue
        for path in paths:
            module, _, name = f"{package}.{path}".rpartition(".")
            cls = getattr(importlib.import_module(module), name, None)
            if isinstance(cls, type):
                classes.append(cls)
    return isinstance(obj, tuple(classes))
