"""Sequential and permuted pixel-by-pixel digits: scikit-learn's bundled 8×8 `load_digits`, T = 64.

The offline stand-in for sequential / permuted MNIST (Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016):
each image is read one pixel per time step (row by row, or in one fixed random order for the permuted
variant) and the class is predicted from the last hidden state. 1797 images, 1437 train / 360 validate.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from rnn_stability.demo.models import Implementation, SequenceRegressor

__all__ = ["load_pixel_digits", "DigitsDataModule", "SequenceClassifier"]

#: Seed of the one pixel order of the permuted variant (the same for every run, as in permuted MNIST).
PERMUTATION_SEED = 1234
NUM_VAL = 360


def load_pixel_digits(permuted: bool) -> tuple[Tensor, Tensor]:
    """Images as `(1797, 64, 1)` pixel sequences scaled to [0, 1], and their labels `(1797,)`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is in the `bench` / `dev` extras
        raise ImportError(
            "The digits tasks need scikit-learn: pip install 'rnn-stability[bench]'."
        ) from error
    digits = load_digits()
    pixels = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    if permuted:
        order = torch.randperm(64, generator=torch.Generator().manual_seed(PERMUTATION_SEED))
        pixels = pixels[:, order]
    return pixels.unsqueeze(-1), torch.tensor(digits.target, dtype=torch.int64)


class DigitsDataModule(L.LightningDataModule):
    """Shuffled training batches and a fixed validation split (the last 360 of one fixed shuffle).

    Args:
        permuted: read the pixels in one fixed random order instead of row by row.
        batch_size: images per training batch.
        seed: seed of the order of the training batches.
    """

    def __init__(self, permuted: bool = False, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        x, y = load_pixel_digits(permuted)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        self.train_set = TensorDataset(x[:-NUM_VAL], y[:-NUM_VAL])
        self.val_set = TensorDataset(x[-NUM_VAL:], y[-NUM_VAL:])
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)


class SequenceClassifier(SequenceRegressor):
    """The demo's `SequenceRegressor` (recurrent layer, linear head on the last step, Adam) as a classifier.

    Args:
        cell: `"lstm"` or `"gru"`.
        hidden_size: hidden width.
        implementation: `"torch"` or `"rnn_stability"`, see `rnn_stability.demo.models.build_rnn`.
        layer_norm: layer-normalised recurrence (`implementation="rnn_stability"` only).
        lr: Adam learning rate.
        num_classes: number of classes.
    """

    def __init__(
        self,
        cell: str = "lstm",
        hidden_size: int = 64,
        implementation: Implementation = "torch",
        layer_norm: bool = False,
        lr: float = 1e-3,
        num_classes: int = 10,
    ) -> None:
        super().__init__(cell, 1, hidden_size, implementation=implementation, layer_norm=layer_norm, lr=lr)
        self.head = nn.Linear(hidden_size, num_classes)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)
