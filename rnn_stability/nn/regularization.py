"""Recurrent regularisers of our `LSTM` / `GRU` / cells: their checks and the random masks they draw.

The options, all off by default (each module's docstring gives the formulas):

- `weight_dropout` — DropConnect (Wan et al. 2013, "Regularization of Neural Networks using DropConnect") on
  the recurrent weights `weight_hh_l{k}`, one mask per forward pass, as in AWD-LSTM (Merity, Keskar & Socher
  2018, "Regularizing and Optimizing LSTM Language Models").
- `recurrent_dropout` — variational dropout (Gal & Ghahramani 2016, "A Theoretically Grounded Application of
  Dropout in Recurrent Neural Networks") on `h_{t-1}` where it enters `W_hh`, one mask per sequence and layer
  / direction, shared by the gates (Keras's `recurrent_dropout`).
- `input_dropout` — one mask per sequence on each layer's input, the same at every step ("locked" dropout).
- `zoneout` — Krueger et al. 2017, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations":
  every unit keeps its previous value with probability `p`, drawn anew at every step; `eval()` uses the
  expectation `p h_{t-1} + (1 - p) h_t`.

The three dropouts scale what they keep by `1 / (1 - p)` and are exactly no-ops in `eval()`. Every mask
applies its `p` in steps of `2**-16` (`quantized_probability`: a value compares 16 random bits, or 8 where that
is exact, which keeps a mask per unit and step cheap to draw). Masks come from torch's global generator, so
`lightning.seed_everything` reproduces a run, or from the module's `mask_generator` attribute when set: the
forward pass draws them with `draw_masks`, which tests call with a generator seeded alike to get the very
masks a forward pass used.
"""

from __future__ import annotations

import math
import threading
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rnn_stability.nn.native import native_ops

__all__ = [
    "REGULARIZERS",
    "LayerMasks",
    "apply_locked",
    "check_probability",
    "check_zoneout",
    "draw_masks",
    "dropout_mask",
    "keep_mask",
    "quantized_probability",
    "zoneout_blend",
]

#: Our regularisation options with their "off" values, in the order `extra_repr` shows them.
REGULARIZERS: dict[str, Any] = {
    "weight_dropout": 0.0,
    "recurrent_dropout": 0.0,
    "input_dropout": 0.0,
    "zoneout": (0.0, 0.0),
    "batch_norm": False,
}


def check_probability(name: str, value: Any) -> float:
    """Return `value` as a float if it is a probability in `[0, 1)`, else raise naming `name`.

    Raises:
        TypeError: if `value` is not a real number (a bool is not one).
        ValueError: if it is outside `[0, 1)` or NaN.

    Examples:
        >>> check_probability("weight_dropout", 0.5)
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1), got {value!r}")
    return float(value)


def check_zoneout(value: Any) -> tuple[float, float]:
    """`zoneout` as `(p_hidden, p_cell)`: one probability is used for both.

    Raises:
        TypeError: if `value` is neither a number nor a pair of numbers.
        ValueError: if a probability is outside `[0, 1)`.

    Examples:
        >>> check_zoneout(0.1), check_zoneout((0.05, 0.5))
        ((0.1, 0.1), (0.05, 0.5))
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError(f"`zoneout` must be a float or a (hidden, cell) pair of floats, got {value!r}")
        return check_probability("zoneout", value[0]), check_probability("zoneout", value[1])
    p = check_probability("zoneout", value)
    return p, p


#: The masks apply a probability `p` in steps of `2 ** -MASK_BITS`: as `round(p * 2 ** MASK_BITS)` in units of
#: `2 ** -MASK_BITS` (`quantized_probability`).
MASK_BITS = 16


def quantized_probability(p: float) -> float:
    """The probability the masks of `p` apply: `p` rounded to a multiple of `2**-16` (off by `2**-17` at most).

    Examples:
        >>> quantized_probability(0.5), quantized_probability(0.1), 6554 / 65536
        (0.5, 0.100006103515625, 0.100006103515625)
    """
    return round(p * 2**MASK_BITS) / 2**MASK_BITS


def _bernoulli(
    shape: tuple[int, ...] | torch.Size,
    q: int,
    like: Tensor,
    generator: torch.Generator | None,
    hit: float = 1.0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """`hit` with probability `q / 2**16`, else 0, in `dtype` (default: `like`'s) on `like`'s device.

    Every value compares 16 uniformly random bits with `q`. On CPU with the C++ kernel (`native_ops`), the
    bits come from a counter-based SplitMix64 stream seeded by one draw of `generator` (csrc/masks.cpp):
    about 0.05 ms for a 100x32x256 zoneout mask, one pass writing the mask. Elsewhere (CUDA, `torch.compile`,
    no kernel) they come from the generator itself, `random_` on an int64 tensor viewed as int16 (4 values per
    64-bit draw, or 8 bytes when `q` is a multiple of 256): on CPU 0.6 ms (16 bits) / 0.33 ms (8 bits) for the
    same mask plus a comparison pass, against 1.6 ms for a float uniform per value (`rand < p`). So a seed
    reproduces the masks of one setup; with the kernel and without it, the streams differ.
    """
    dtype = like.dtype if dtype is None else dtype
    if q == 0 or q == 2**MASK_BITS:
        return torch.full(shape, hit if q else 0.0, dtype=dtype, device=like.device)
    ops = _mask_ops(like, dtype)
    if ops is not None:
        seed = int(torch.empty((), dtype=torch.int64).random_(-(2**63), None, generator=generator))
        return ops.bernoulli_mask(math.prod(shape), q, hit, seed, dtype).view(shape)
    if q % 2 ** (MASK_BITS - 8) == 0:  # unsigned bytes below q / 256
        lane, threshold = torch.uint8, q >> (MASK_BITS - 8)
    else:  # signed 16-bit values below q - 2**15
        lane, threshold = torch.int16, q - 2 ** (MASK_BITS - 1)
    per_word, n = 8 // torch.empty(0, dtype=lane).element_size(), math.prod(shape)
    words = -(-n // per_word)
    mask = torch.empty(words * per_word, dtype=dtype, device=like.device)

    def compare(buffer: Tensor, out: Tensor) -> None:
        torch.lt(buffer.random_(-(2**63), None, generator=generator).view(lane), threshold, out=out)

    if like.device.type != "cpu" or torch.compiler.is_compiling():
        # All words at once (a slice of the lanes breaks torch.compile's functionalisation), then cut to shape.
        compare(torch.empty(words, dtype=torch.int64, device=like.device), mask)
    else:  # the same draws, in chunks through a scratch buffer (see `_scratch_words`)
        for start in range(0, words, _SCRATCH_WORDS):
            count = min(_SCRATCH_WORDS, words - start)
            compare(_scratch_words(count), mask[start * per_word : (start + count) * per_word])
    mask = mask[:n].view(shape)
    return mask if hit == 1.0 else mask.mul_(hit)


def _mask_ops(like: Tensor, dtype: torch.dtype) -> Any | None:
    """The C++ ops that draw a mask of `dtype` for `like`'s device, or `None` (`_bernoulli` then uses torch)."""
    if like.device.type != "cpu" or dtype not in _NATIVE_MASK_DTYPES or torch.compiler.is_compiling():
        return None
    return native_ops()


_NATIVE_MASK_DTYPES = (torch.bool, torch.float32, torch.float64)

#: The most random words `_bernoulli` draws at once on CPU (2 MiB of scratch per thread).
_SCRATCH_WORDS = 2**18
_scratch = threading.local()


def _scratch_words(count: int) -> Tensor:
    """`count` (at most `_SCRATCH_WORDS`) int64 words of this thread's scratch buffer, kept between calls.

    A fresh buffer of random words for each mask, freed right after it, can make glibc's allocator hand heap
    memory back to the system and fault it in again: 3.0 instead of 0.6 ms CPU per 100x32x256 mask (mostly
    system time) in a loop that keeps the previous mask alive.
    """
    buffer = getattr(_scratch, "words", None)
    if buffer is None or buffer.numel() < count:
        with torch.inference_mode(False):  # a normal tensor: one made in inference mode fails outside it
            buffer = _scratch.words = torch.empty(max(count, 2**12), dtype=torch.int64)
    return buffer[:count]


def dropout_mask(
    shape: tuple[int, ...] | torch.Size, p: float, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Inverted-dropout mask: 0 with probability `q`, else `1 / (1 - q)`, in `like`'s dtype and device.

    `q = quantized_probability(p)`: `p` rounded to a multiple of `2**-16` (`p = 0.2` drops with probability
    `13107 / 65536 = 0.1999969`; a multiple of `2**-8`, such as 0.5, is exact), and the kept values are
    scaled by `1 / (1 - q)`, so the mask's expectation is exactly 1.

    Examples:
        >>> m = dropout_mask((1000,), 0.5, torch.empty(0), torch.Generator().manual_seed(0))
        >>> sorted(m.unique().tolist()), abs(float(m.mean()) - 1.0) < 0.1
        ([0.0, 2.0], True)
    """
    keep = 2**MASK_BITS - round(p * 2**MASK_BITS)
    return _bernoulli(shape, keep, like, generator, 2**MASK_BITS / keep if keep else 0.0)


def keep_mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    like: Tensor,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Zoneout mask: 1 (keep the previous value) with probability `q`, else 0, in `dtype` (default: `like`'s)
    on `like`'s device. The modules draw `torch.bool` masks (`draw_masks`): the comparison writes them
    directly, where a float mask costs a conversion pass and four times the memory.

    `q = quantized_probability(p)`: `p` rounded to a multiple of `2**-16`, off by `2**-17` at most
    (`p = 0.1` keeps with probability `6554 / 65536 = 0.1000061`; a multiple of `2**-8`, such as 0.25 or
    0.5, is exact; a `p` below `2**-17` keeps nothing, one of `1 - 2**-17` or more keeps everything).

    Examples:
        >>> keep_mask((4,), 0.0, torch.empty(0)).tolist()
        [0.0, 0.0, 0.0, 0.0]
        >>> m = keep_mask((1000, 1000), 0.25, torch.empty(0), torch.Generator().manual_seed(0))
        >>> abs(float(m.mean()) - 0.25) < 3e-3
        True
    """
    return _bernoulli(shape, round(p * 2**MASK_BITS), like, generator, dtype=dtype)


class LayerMasks(NamedTuple):
    """The masks of one layer and direction for one forward pass (`None` where the option is off).

    `weight_hh`: shape of `weight_hh`; `input`: `(B, input width)`; `recurrent`: `(B, hidden width)` (the
    width of `h`, `proj_size` if set); `zone_h` / `zone_c`: `(rows, width)` in the packed time-major layout
    of the layer's input (`rows = sum(step sizes)`), for the hidden and the cell state, `torch.bool` (true: keep
    the previous value). Batch rows are in the order the layer sees them: a `PackedSequence`'s sorted order.
    """

    weight_hh: Tensor | None = None
    input: Tensor | None = None
    recurrent: Tensor | None = None
    zone_h: Tensor | None = None
    zone_c: Tensor | None = None


def zoneout_blend(new: Tensor, old: Tensor, keep: Tensor | float) -> Tensor:
    """`keep * old + (1 - keep) * new`: zoneout's update with a 0/1 (or bool) mask, or its expectation with `p`."""
    if isinstance(keep, float):
        return torch.lerp(new, old, keep) if keep > 0 else new
    return torch.addcmul(new, keep, old - new)


def apply_locked(x: Tensor, mask: Tensor, step_sizes: list[int]) -> Tensor:
    """`x` of shape `(sum(step_sizes), F)` (time-major, packed layout) times a per-sequence `(B, F)` mask."""
    if step_sizes[0] == step_sizes[-1]:
        return (x.view(len(step_sizes), step_sizes[0], -1) * mask).view_as(x)
    return x * torch.cat([mask[:size] for size in step_sizes], 0)


def draw_masks(
    module: Any, step_sizes: list[int], like: Tensor, generator: torch.Generator | None = None
) -> list[LayerMasks]:
    """The masks of one forward pass of `module` (our `LSTM` or `GRU`), one `LayerMasks` per layer and direction.

    In torch's layer-major order (`_l0`, `_l0_reverse`, `_l1`, ...); the input mask of a layer sits on its
    forward direction (both directions read the same input). Draws nothing in `eval()`, where zoneout uses its
    expectation instead. Masks are drawn in a fixed order (per layer and direction: `weight_hh`, `input`,
    `recurrent`, `zone_h`, `zone_c`), so the same generator state gives the same masks: this is how the module
    draws them, from `module.mask_generator` (`None`: torch's global generator).

    Args:
        module: the recurrent module.
        step_sizes: batch size at each time step (`PackedSequence.batch_sizes`; all equal for padded input).
        like: a tensor with the dtype and device of the masks.
        generator: where the random numbers come from; `None` for torch's global generator.
    """
    directions = 2 if module.bidirectional else 1
    if not module.training:
        return [LayerMasks()] * (module.num_layers * directions)
    batch, rows = step_sizes[0], sum(step_sizes)
    width = module.proj_size or module.hidden_size
    p_h, p_c = module.zoneout
    lstm = module.mode == "LSTM"

    def draw(p: float, shape: tuple[int, ...], keep: bool = False) -> Tensor | None:
        if p == 0.0:
            return None
        return (
            keep_mask(shape, p, like, generator, torch.bool)
            if keep
            else dropout_mask(shape, p, like, generator)
        )

    masks = []
    for layer in range(module.num_layers):
        in_width = module.input_size if layer == 0 else width * directions
        for direction in range(directions):
            weight = getattr(module, f"weight_hh_l{layer}{'_reverse' if direction else ''}")
            masks.append(
                LayerMasks(
                    weight_hh=draw(module.weight_dropout, tuple(weight.shape)),
                    input=draw(module.input_dropout, (batch, in_width)) if direction == 0 else None,
                    recurrent=draw(module.recurrent_dropout, (batch, width)),
                    zone_h=draw(p_h, (rows, width), keep=True),
                    zone_c=draw(p_c, (rows, module.hidden_size), keep=True) if lstm else None,
                )
            )
    return masks


def loop_zoneout(
    module: Any, masks: LayerMasks, step_sizes: list[int], states: int
) -> tuple[list[Tensor] | float | None, ...]:
    """Zoneout of each state for a step loop: per-step 0/1 masks (training), `p` (eval), or `None` (off)."""
    zone: list[list[Tensor] | float | None] = []
    for p, mask in zip(module.zoneout[:states], (masks.zone_h, masks.zone_c)[:states], strict=True):
        if p == 0.0:
            zone.append(None)
        elif mask is None:
            zone.append(p)
        else:
            zone.append(list(mask.split(step_sizes, 0)))
    return tuple(zone)
