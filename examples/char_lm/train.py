"""Character-level language model on a small public-domain text, with `convert_rnn` on an existing model.

`CharLSTM` stands for a model you already have, written with plain `torch.nn.LSTM`. One call,
`rnn_stability.nn.convert_rnn(model, layer_norm=True, residual=True)`, swaps its LSTM for ours (weights
copied) so it trains with layer normalisation and residual connections; nothing else changes. Perplexity
is measured with torchmetrics. After `fit`, the script prints the prompt (`--prompt`) and, separately,
the characters the model samples after it.

Run from the repository root (after `make test` or `make demo`):

    .venv/bin/python examples/char_lm/train.py fit --config examples/char_lm/config.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.text import Perplexity

from rnn_stability.nn import convert_rnn

__all__ = ["CORPUS", "CharDataModule", "CharLSTM", "CharLanguageModel", "main"]

#: Sonnets 18, 29, 73, 116 and 130 (Shakespeare, 1609), the Gettysburg Address (Lincoln, 1863) and the
#: opening of Pride and Prejudice (Austen, 1813): public-domain texts, quoted from memory, about 7 KB.
CORPUS = Path(__file__).with_name("corpus.txt")


class CharDataModule(L.LightningDataModule):
    """Overlapping windows of a text file, encoded as character ids; the last ``val_fraction`` validates.

    Args:
        path: the text file (UTF-8).
        seq_len: characters per training window (the target is the window shifted by one).
        batch_size: windows per batch.
        val_fraction: share of the text, taken from its end, used for validation.
    """

    def __init__(
        self, path: str = str(CORPUS), seq_len: int = 64, batch_size: int = 32, val_fraction: float = 0.1
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}.")
        text = Path(path).read_text(encoding="utf-8")
        self.alphabet = sorted(set(text))
        self.vocab_size = len(self.alphabet)
        ids = torch.tensor([self.alphabet.index(ch) for ch in text], dtype=torch.int64)
        split = int(len(ids) * (1 - val_fraction))
        if split < seq_len + 1 or len(ids) - split < seq_len + 1:
            raise ValueError(f"`seq_len` ({seq_len}) is too long for a text of {len(ids)} characters.")
        self.train_set = self._windows(ids[:split], seq_len, stride=seq_len // 4 or 1)
        self.val_set = self._windows(ids[split:], seq_len, stride=seq_len)
        self.batch_size = batch_size

    @staticmethod
    def _windows(ids: Tensor, seq_len: int, stride: int) -> TensorDataset:
        chunks = ids.unfold(0, seq_len + 1, stride)
        return TensorDataset(chunks[:, :-1], chunks[:, 1:])

    def encode(self, text: str) -> Tensor:
        """Character ids of `text` (characters not in the corpus are dropped)."""
        return torch.tensor(
            [self.alphabet.index(ch) for ch in text if ch in self.alphabet], dtype=torch.int64
        )

    def decode(self, ids: Tensor) -> str:
        """The text of a 1-d tensor of ids."""
        return "".join(self.alphabet[int(i)] for i in ids)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class CharLSTM(nn.Module):
    """A plain-PyTorch character model, as found in many existing projects: embedding, LSTM, linear."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        hidden, state = self.lstm(self.embed(ids), state)
        return self.out(hidden), state


class CharLanguageModel(L.LightningModule):
    """Trains :class:`CharLSTM`, converted with :func:`~rnn_stability.nn.convert_rnn` unless ``convert=False``.

    Logs ``train_loss`` and ``val_perplexity`` (``torchmetrics.text.Perplexity``).

    Args:
        vocab_size: number of distinct characters (linked from the data module by the CLI).
        embedding_dim: character embedding width.
        hidden_size: LSTM width.
        num_layers: stacked LSTM layers.
        convert: replace the model's ``torch.nn.LSTM`` by :class:`rnn_stability.nn.LSTM`.
        layer_norm: ``layer_norm`` option of the converted LSTM.
        residual: ``residual`` option of the converted LSTM (layers 2+ get a skip connection).
        lr: Adam learning rate.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 32,
        hidden_size: int = 128,
        num_layers: int = 2,
        convert: bool = True,
        layer_norm: bool = True,
        residual: bool = True,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        model = CharLSTM(vocab_size, embedding_dim, hidden_size, num_layers)
        # The one line that makes an existing model use the stable LSTM (weights are copied over).
        self.model = convert_rnn(model, layer_norm=layer_norm, residual=residual) if convert else model
        self.val_perplexity = Perplexity()
        self.lr = lr

    def forward(self, ids: Tensor) -> Tensor:
        logits, _ = self.model(ids)
        return logits

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        ids, targets = batch
        loss = nn.functional.cross_entropy(self(ids).flatten(0, 1), targets.flatten())
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        ids, targets = batch
        self.val_perplexity(self(ids), targets)
        self.log("val_perplexity", self.val_perplexity, prog_bar=True)

    @torch.no_grad()
    def sample(self, prompt: Tensor, length: int, temperature: float = 0.8) -> Tensor:
        """`length` character ids drawn after `prompt` (1-d ids), one at a time."""
        logits, state = self.model(prompt.unsqueeze(0).to(self.device))
        out = []
        for _ in range(length):
            next_id = torch.multinomial(torch.softmax(logits[0, -1] / temperature, -1), 1)
            out.append(next_id)
            logits, state = self.model(next_id.unsqueeze(0), state)
        return torch.cat(out).cpu()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


DEFAULT_PROMPT = "Shall I compare thee"


class _CharCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.add_argument(
            "--prompt",
            type=str,
            default=DEFAULT_PROMPT,
            help="text the sample printed after fit continues (the default opens sonnet 18, which is in "
            "the training text); characters not in the corpus are dropped",
        )


def main(args: ArgsType = None, sample_length: int = 200) -> LightningCLI:
    """Runs the LightningCLI, then prints the prompt and a sample after `fit`; `args` replaces the command line."""
    cli = _CharCLI(CharLanguageModel, CharDataModule, args=args, save_config_kwargs={"overwrite": True})
    if cli.subcommand == "fit" and sample_length > 0:
        data: CharDataModule = cli.datamodule  # type: ignore[assignment]
        model: CharLanguageModel = cli.model  # type: ignore[assignment]
        model.eval()
        prompt = data.decode(data.encode(cli.config["fit"]["prompt"]))
        if not prompt:
            raise SystemExit("--prompt: none of its characters occur in the corpus")
        ids = model.sample(data.encode(prompt), sample_length)
        print(f"prompt: {prompt!r}")
        print(f"sampled continuation ({sample_length} characters, temperature 0.8):")
        print(data.decode(ids))
    return cli


if __name__ == "__main__":
    main()
