"""Command line of rnn-stability: `rnn-stability demo` and `rnn-stability build-native` (also
`python -m rnn_stability ...`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from rnn_stability import __version__

__all__ = ["build_parser", "main"]

_DEFAULTS_NOTE = (
    "Trains a vanilla setup (torch.nn.LSTM, default init, no clipping) and the stable setup "
    "(rnn_stability.nn.LSTM with layer norm, chrono init, adaptive clipping, monitors) on the adding "
    "problem side by side, then prints a comparison table and writes plots."
)


#: Integer options of `demo`: flag, smallest and largest accepted value, help text.
_INT_OPTIONS = (
    ("--seq-len", 2, 10_000, "sequence length T of the adding problem"),
    ("--steps", 1, 1_000_000, "optimizer steps per setup"),
    ("--seed", 0, 2**32 - 1, "random seed of data and models"),
    ("--hidden-size", 1, 4096, "hidden width"),
    ("--batch-size", 1, 100_000, "sequences per step"),
)


def _bounded_int(name: str, minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{name} must be in [{minimum}, {maximum}], got {value}")
        return value

    return parse


def _positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be in (0, 1], got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `rnn-stability` command.

    Examples:
        >>> args = build_parser().parse_args(["demo", "--seq-len", "50", "--cell", "gru"])
        >>> args.seq_len, args.cell
        (50, 'gru')
    """
    from rnn_stability.demo.config import CELLS, DemoConfig

    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="rnn-stability", description="Stable recurrent networks for Lightning."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="vanilla vs stable LSTM on the adding problem (about 2 minutes on 2 CPU cores)",
        description=_DEFAULTS_NOTE,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for flag, low, high, help_text in _INT_OPTIONS:
        dest = flag[2:].replace("-", "_")
        demo.add_argument(
            flag, type=_bounded_int(flag, low, high), default=getattr(defaults, dest), help=help_text
        )
    demo.add_argument(
        "--output-dir", type=Path, default=defaults.output_dir, help="folder for plots, table and metrics"
    )
    demo.add_argument("--cell", choices=CELLS, default=defaults.cell, help="recurrent cell")
    demo.add_argument("--lr", type=_positive_float("--lr"), default=defaults.lr, help="Adam learning rate")
    demo.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=argparse.SUPPRESS,  # no "(default: None)" in --help; absent means "choose"
        help="parallel runs, one process per set-up (default: 2 if two cores are free, else 1)",
    )
    # checks made after parsing report through the demo's parser, so that they print the demo's usage
    demo.set_defaults(command_parser=demo)
    build = commands.add_parser(
        "build-native",
        help="build the C++ LSTM loop of LSTM(layer_norm=True) now, not at the first forward",
        description="Compiles the C++ time loop of the layer-normalised LSTM into this environment's cache "
        "folder (RNN_STABILITY_NATIVE_CACHE, default ~/.cache/torch_extensions/rnn_stability) and says "
        "where and how long it took; does nothing if a valid build is cached (see --force).",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if a valid build is cached")
    return parser


def build_native(force: bool = False) -> int:
    """Runs `rnn-stability build-native`: builds the C++ LSTM loop, prints where; the exit status."""
    from rnn_stability.nn.native_build import ensure_built

    try:
        build = ensure_built(force=force)
    except Exception as error:  # the message says what failed (compiler output, lock file, permissions)
        print(f"rnn-stability build-native: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if build.built:
        print(f"built the C++ LSTM loop in {build.seconds:.1f} s: {build.library}")
    else:
        print(f"the C++ LSTM loop is already built (pass --force to rebuild): {build.library}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `rnn-stability` command line; returns the exit status.

    Exit status 0 on success, 2 for a bad option (argparse's convention, with a message and no
    traceback), 1 if training fails, 130 if interrupted.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
    """
    args = build_parser().parse_args(argv)
    if args.command == "build-native":
        return build_native(force=args.force)
    parser: argparse.ArgumentParser = args.command_parser

    from rnn_stability.demo import DemoConfig

    try:
        config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig) if f.name in args})
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if importlib.util.find_spec("matplotlib") is None:  # checked now, not after minutes of training
        parser.error("the demo writes plots with matplotlib: pip install 'rnn-stability[plot]'")
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot create --output-dir {str(config.output_dir)!r}: {error.strerror or error}")

    from rnn_stability.demo import DemoError, run_demo  # torch and Lightning load only from here on

    try:
        run_demo(config, jobs=getattr(args, "jobs", None))
    except DemoError as error:
        print(f"rnn-stability demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnn-stability demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
