"""Gate-aware initialisation of every recurrent module of a LightningModule, once, before training starts."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from rnn_stability.callbacks.portable_state import portable_state
from rnn_stability.functional.init import SCHEMES, check_scheme, init_rnn_, recurrent_kind, recurrent_modules
from rnn_stability.functional.init.scheme import check_scheme_options

__all__ = ["RNNInitializer"]


class RNNInitializer(Callback):
    r"""Initialise every recurrent module (LSTM, GRU, RNN and cells, torch's or ours) with a gate-aware scheme.

    A thin shell over `rnn_stability.functional.init_rnn_` (see there for the schemes: `"orthogonal"`
    — Saxe et al. 2014 with the forget bias of Jozefowicz et al. 2015; `"chrono"` — Tallec & Ollivier 2018,
    "Can recurrent neural networks warp time?"; `"irnn"` — Le, Jaitly & Hinton 2015; `"xavier"`).

    **When.** In `on_fit_start`: after a checkpoint passed to `Trainer.fit(ckpt_path=...)` has been restored
    (`trainer.ckpt_path` is only known from then on) and after `configure_model`. It runs **at most once**
    and **never** over loaded weights:

    - not when `Trainer.fit(ckpt_path=...)` resumes from a checkpoint (`trainer.ckpt_path` is set);
    - not after its own state was restored (`state_dict` records `applied: True`);
    - not on a second `fit` with the same callback;
    - not when you set `applied = True` yourself — do that when you load weights by other means
      (`Model.load_from_checkpoint` then `fit` without `ckpt_path`), or leave the callback out.

    Parameters are changed in place, so optimizers already created keep working. Strategies that shard
    parameters (FSDP, DeepSpeed) are not supported: initialise the model before fitting instead, with
    `rnn_stability.functional.init_rnn_`.

    **Ranks.** With `seed` set, every rank draws from its own `torch.Generator` seeded with `seed`, so the
    weights are identical on all ranks and independent of the global RNG state. With `seed=None` rank 0 draws a
    seed from its global torch RNG and broadcasts it, so the ranks still agree without `lightning.seed_everything`
    (DDP has already broadcast rank 0's weights by `on_fit_start` and does not do it again).

    Modules are visited in `named_modules` order; cells inside a recurrent layer belong to that layer. A short
    table (module name, type, scheme) is logged on rank zero.

    Args:
        scheme: a scheme name for every recurrent module, or a mapping from module-name patterns (`fnmatch`
            style, e.g. `"encoder.*"`, matched against names from `named_modules`) to schemes; the first
            matching pattern wins and unmatched modules keep their weights.
        max_timescale: `T_max` of the `"chrono"` scheme (required there): the longest dependency expected.
        forget_bias: effective LSTM forget-gate bias of the `"orthogonal"` and `"xavier"` schemes.
        gain: gain of the recurrent weights.
        seed: seed of the initialisation; `None` draws one from rank 0's global torch RNG.

    Raises:
        ValueError: for an unknown scheme, an empty mapping, `"chrono"` without `max_timescale`, a
            non-positive `gain`, a non-finite `forget_bias` or a negative `seed`.
        TypeError: at fit time, if a scheme does not apply to a module it selects (e.g. `"irnn"` on an LSTM);
            nothing is modified then.

    Examples:
        >>> from lightning import Trainer
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from rnn_stability.data import adding_problem
        >>> from rnn_stability.demo.models import SequenceRegressor
        >>> model = SequenceRegressor(hidden_size=8)  # a torch.nn.LSTM named `rnn` and a linear head
        >>> data = DataLoader(TensorDataset(*adding_problem(16, 12)), batch_size=8)
        >>> init = RNNInitializer("chrono", max_timescale=12, seed=0)
        >>> trainer = Trainer(max_steps=1, callbacks=[init], logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(model, data)
        >>> init.applied, init.initialized
        (True, [('rnn', 'LSTM', 'chrono')])
    """

    def __init__(
        self,
        scheme: str | dict[str, str] = "orthogonal",
        max_timescale: float | None = None,
        forget_bias: float = 1.0,
        gain: float = 1.0,
        seed: int | None = None,
    ) -> None:
        schemes = _check_scheme_argument(scheme)
        check_scheme_options(schemes, gain=gain, forget_bias=forget_bias, max_timescale=max_timescale)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise ValueError(f"`seed` must be None or an integer in [0, 2**63), got {seed!r}")
        self.scheme = scheme
        self.max_timescale = max_timescale
        self.forget_bias = float(forget_bias)
        self.gain = float(gain)
        self.seed = seed
        #: True once weights were initialised (or found to come from a checkpoint); nothing is done after that.
        self.applied = False
        #: `(module name, module type, scheme)` of every module initialised.
        self.initialized: list[tuple[str, str, str]] = []

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies (darts' `save`, neuralforecast's `fit`) leave the run behind.
        return portable_state(self)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(scheme=self.scheme, seed=self.seed)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._initialize(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "initialized": [list(row) for row in self.initialized]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A checkpoint was written after initialisation, so its weights must never be re-initialised.
        self.applied = bool(state_dict.get("applied", True))
        self.initialized = [(str(a), str(b), str(c)) for a, b, c in state_dict.get("initialized", [])]

    def scheme_for(self, name: str) -> str | None:
        """The scheme applied to the module called `name`, or `None` if no pattern selects it."""
        if isinstance(self.scheme, str):
            return self.scheme
        return next((s for pattern, s in self.scheme.items() if fnmatchcase(name, pattern)), None)

    def _initialize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.applied:
            return
        if trainer.ckpt_path is not None:
            self.applied = True
            rank_zero_info(
                f"RNNInitializer: resuming from {trainer.ckpt_path}; recurrent weights left as loaded."
            )
            return
        modules = recurrent_modules(pl_module)
        if not modules:
            rank_zero_warn(
                "RNNInitializer: the LightningModule has no recurrent module; nothing initialised."
            )
            return
        options: dict[str, Any] = {
            "gain": self.gain,
            "forget_bias": self.forget_bias,
            "max_timescale": self.max_timescale,
        }
        plan: list[tuple[str, nn.Module, str]] = []
        for name, module in modules:
            scheme = self.scheme_for(name)
            if scheme is not None:
                check_scheme(module, scheme, **options)
                plan.append((name, module, scheme))
        if isinstance(self.scheme, dict):
            for pattern in self.scheme:
                if not any(fnmatchcase(name, pattern) for name, _ in modules):
                    rank_zero_warn(
                        f"RNNInitializer: pattern {pattern!r} of `scheme` matches no recurrent module."
                    )
        seed = self.seed
        if seed is None:
            # one draw from rank 0's global RNG, shared with every rank: the ranks get identical weights even
            # without `seed_everything` (DDP broadcast rank 0's weights before this hook and won't do it again)
            seed = trainer.strategy.broadcast(int(torch.randint(0, 2**62, (1,)).item()), src=0)
        generator = torch.Generator().manual_seed(seed)
        for name, module, scheme in plan:
            init_rnn_(module, scheme, generator=generator, **options)
            self.initialized.append((name, type(module).__name__, scheme))
        self.applied = True
        rank_zero_info(self._table(modules))

    def _table(self, modules: list[tuple[str, nn.Module]]) -> str:
        rows = [("module", "type", "scheme")]
        for name, module in modules:
            scheme = self.scheme_for(name)
            label = type(module).__name__
            if label != recurrent_kind(module):
                label += f" ({recurrent_kind(module)})"
            detail = scheme or "unchanged"
            if scheme == "chrono":
                detail += f" (max_timescale={self.max_timescale:g})"
            rows.append((name or "<root>", label, detail))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        seed = "global RNG" if self.seed is None else f"seed {self.seed}"
        return f"RNNInitializer ({seed}):\n" + "\n".join(lines)


def _check_scheme_argument(scheme: Any) -> set[str]:
    accepted = ", ".join(map(repr, SCHEMES))
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"`scheme` must be one of {accepted} or a mapping to them, got {scheme!r}")
        return {scheme}
    if not isinstance(scheme, dict) or not scheme:
        raise ValueError(
            f"`scheme` must be a scheme name or a non-empty dict of pattern -> scheme, got {scheme!r}"
        )
    for pattern, value in scheme.items():
        if not isinstance(pattern, str) or value not in SCHEMES:
            raise ValueError(f"`scheme` maps {pattern!r} to {value!r}; values must be one of {accepted}")
    return set(scheme.values())
