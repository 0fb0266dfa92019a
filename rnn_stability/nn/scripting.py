"""What `torch.jit.script` compiles for our modules: torch's own class, when no option of ours is on.

TorchScript cannot compile the layer-norm and residual paths (Python loops, custom autograd Functions, the
C++ kernel's operators). With every option off our modules *are* torch's (same forward, parameters and
state), so `__prepare_scriptable__`, which `torch.jit.script` calls on each module before compiling it,
hands it an instance of the torch class holding the same parameters, buffers, hooks and mode: the script
module is exactly the one torch would give (`torch.jit.script` puts it in place of ours in the scripted
model's parents, as it does for every module with this hook). With an option on it raises, naming the
exporters that do handle these modules.
"""

from __future__ import annotations

from torch import nn

__all__ = ["torch_module_for_scripting"]


def torch_module_for_scripting(module: nn.Module, options: tuple[str, ...]) -> nn.Module:
    """An instance of the torch class `module` derives from, sharing its state, for `torch.jit.script`.

    Args:
        module: one of our `LSTM`, `GRU`, `LSTMCell`, `GRUCell`.
        options: the names of its options (`layer_norm`, `residual`, the regularisers), all of which must be
            off.

    Raises:
        RuntimeError: if one of `options` is on: TorchScript cannot compile that path.
    """
    # Off is False for a flag, 0.0 for a probability, (0.0, 0.0) for zoneout.
    enabled = [name for name in options if getattr(module, name) not in (False, (0.0, 0.0))]
    if enabled:
        flags = ", ".join(f"{name}={getattr(module, name)!r}" for name in enabled)
        raise RuntimeError(
            f"torch.jit.script cannot compile {type(module).__name__}({flags}): TorchScript does not "
            "support its time loops and masks (custom autograd Functions and a C++ kernel). "
            "Use torch.compile(model) or torch.export.export(model, args) instead (both supported), or "
            "script the module with these options off (it is then torch's own module)."
        )
    base = next(cls for cls in type(module).__mro__ if cls.__module__.startswith("torch.nn."))
    twin: nn.Module = object.__new__(base)
    twin.__dict__.update({key: value for key, value in module.__dict__.items() if key not in options})
    return twin
