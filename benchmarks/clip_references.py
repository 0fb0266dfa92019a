"""The published clipping implementations ``clip_speed.py`` compares our calls with, and the gradient streams.

- ``torch.nn.utils.clip_grad_value_`` / ``clip_grad_norm_``;
- ZClip, the paper authors' ``zclip`` package (``ZClip(mode="percentile")``: the fixed cap;
  ``mode="zscore"``: the reciprocal rule);
- AutoClip: the listing of Seetharaman et al. (2020), written out below, and the ``autoclip`` package's
  ``QuantileClip(global_threshold=True)``;
- AGC: ``timm.utils.agc.adaptive_clip_grad`` (``pip install --no-deps timm``: timm's torchvision dependency
  does not load beside torch's CPU wheel, so when ``import timm`` fails its ``utils/agc.py``, which imports
  only torch, is loaded from its file).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
from torch import nn


def _grad_norm(model: nn.Module) -> float:
    """The AutoClip listing's ``_get_grad_norm``, verbatim but for the names."""
    total_norm = 0.0
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            total_norm += param_norm.item() ** 2
    return total_norm ** (1.0 / 2)


def autoclip_listing(model: nn.Module, percentile: float) -> Callable[[], None]:
    """The AutoClip paper's reference loop body (its ``autoclip_gradient`` handler), with its own history."""
    grad_history: list[float] = []

    def autoclip_gradient() -> None:
        obs_grad_norm = _grad_norm(model)
        grad_history.append(obs_grad_norm)
        clip_value = np.percentile(grad_history, percentile)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_value)

    return autoclip_gradient


def timm_agc() -> Callable[..., None] | None:
    """``timm.utils.agc.adaptive_clip_grad``, or ``None`` when timm is not installed."""
    try:
        from timm.utils.agc import adaptive_clip_grad

        return adaptive_clip_grad
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - e.g. torchvision built for another torch, raising at import
        pass
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = f"{list(spec.submodule_search_locations)[0]}/utils/agc.py"
    agc_spec = importlib.util.spec_from_file_location("timm_utils_agc", path)
    assert agc_spec is not None and agc_spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(agc_spec)
    agc_spec.loader.exec_module(module)
    return module.adaptive_clip_grad


class SmallModel(nn.Module):
    """2-layer LSTM 64 -> 128 with a linear head 128 -> 64 (239 680 parameters): next-frame prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(64, 128, num_layers=2, batch_first=True)
        self.head = nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class LargeModel(nn.Module):
    """2-layer LSTM 512 -> 1024 (14 696 448 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(512, 1024, num_layers=2)


def _signals(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """64 channels of sines with random frequencies and phases, plus noise; occasionally a burst."""
    t = torch.arange(length + 1, dtype=torch.float32)[None, :, None]
    freq = torch.rand(batch, 1, 64, generator=gen) * 0.5
    phase = torch.rand(batch, 1, 64, generator=gen) * 2 * math.pi
    x = torch.sin(freq * t + phase) + 0.1 * torch.randn(batch, length + 1, 64, generator=gen)
    if torch.rand((), generator=gen) < 0.03:
        x = x * 8.0  # a rare outlier batch, as real data has: the stream gets its spikes
    return x


def record_small_stream(steps: int, seed: int = 0) -> tuple[SmallModel, list[list[torch.Tensor]]]:
    """Train ``SmallModel`` (Adam, lr 3e-3, batch 16, T 32) and keep every step's gradients (float32)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    stream = []
    for _ in range(steps):
        x = _signals(gen, 16, 32)
        loss = nn.functional.mse_loss(model(x[:, :-1]), x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        stream.append([p.grad.detach().clone() for p in model.parameters()])
        optimizer.step()
    return model, stream


def large_gradients(model: LargeModel, scale: float = 2e-5, seed: int = 0) -> list[torch.Tensor]:
    """Random gradients whose total norm (~0.08) no rule clips when repeated: every step sees the same norm."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) * scale for p in model.parameters()]
