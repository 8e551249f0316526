"""argparse helpers every command shares: ``type=`` functions for numeric options, so that every command
refuses an out-of-range number while it parses its command line, in one line naming the flag and the valid range, before any model loads.

argparse prints ``argument --flag: <message>`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from expotion.core.devices import default_device
from expotion.core.tiny import DEFAULT_DIR as TINY_DIR

SEED_LIMIT = 2**63  # torch.Generator.manual_seed and numpy take seeds below this


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def bounded(kind: type, low: float, high: float | None = None, *, above: bool = False, name: str = "",
            shown: str = "") -> Callable[[str], int | float]:
    """Numbers of ``kind`` from ``low`` (excluded when ``above``) up to ``high`` (excluded; ``shown`` is how the
    message writes it, e.g. ``2^63``)."""

    def show(value: float) -> str:
        return f"{value:g}" if kind is float else str(value)

    if high is not None:
        rule = f"must be an integer in [{show(low)}, {shown or show(high)})"
    else:
        rule = f"must be greater than {show(low)}" if above else f"must be at least {show(low)}"

    def parse(text: str) -> int | float:
        value = _number(text, kind)
        if (value <= low if above else value < low) or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"{rule}, got {show(value)}")
        return value

    parse.__name__ = name or rule
    return parse


positive_int = bounded(int, 1, name="positive integer")
non_negative_int = bounded(int, 0, name="non-negative integer")
positive_float = bounded(float, 0.0, above=True, name="positive number")
non_negative_float = bounded(float, 0.0, name="non-negative number")
seed = bounded(int, 0, SEED_LIMIT, name="seed", shown="2^63")
port = bounded(int, 1, 65536, name="port")


def check_seed(value: int, where: str = "seed") -> int:
    """``value`` if it is a usable seed (library callers, who bypass argparse); else ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{where} must be an integer in [0, 2^63), got {value!r}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, profiles: bool = True, from_checkpoint: bool = False) -> None:
    """The options every stage that runs pretrained models shares.

    With ``from_checkpoint`` the profile and tiny folder default to None: the adaptor checkpoint records them.
    """
    group = parser.add_argument_group("models and device")
    if profiles:
        recorded = "the checkpoint's, else " if from_checkpoint else ""
        group.add_argument("--profile", choices=("real", "tiny"), default=None if from_checkpoint else "real",
                           help="real: released weights; tiny: small random models of the same classes "
                                f"(offline demo; default: {recorded}real)")
        group.add_argument("--tiny-dir", type=Path, default=None if from_checkpoint else TINY_DIR,
                           help=f"tiny profile: where `expotion weights make-tiny` wrote them (default: {recorded}{TINY_DIR})")
    group.add_argument("--weights-dir", type=Path, default=None,
                       help="weights directory (default $EXPOTION_WEIGHTS or ./weights)")
    group.add_argument("--device", default=default_device(),
                       help="cpu, cuda (several workers: one GPU each, round robin) or cuda:k (default: cuda if available)")
