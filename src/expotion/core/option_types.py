"""argparse helpers every command shares: ``type=`` functions for numeric options, so that every command refuses an out-of-range number while it
parses its command line, in one line naming the flag and the valid range, before any model loads.

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


def int_at_least(low: int, name: str = "") -> Callable[[str], int]:
    """Integers >= ``low``."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = name or f"int >= {low}"
    return parse


def int_in(low: int, high: int, name: str = "", shown: str = "") -> Callable[[str], int]:
    """Integers in ``[low, high)`` (``shown``: how the message writes ``high``, e.g. ``2^63``)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {shown or high}), got {value}")
        return value

    parse.__name__ = name or f"int in [{low}, {high})"
    return parse


def float_above(low: float, name: str = "") -> Callable[[str], float]:
    """Finite numbers > ``low``."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if value <= low:
            raise argparse.ArgumentTypeError(f"must be greater than {low:g}, got {value:g}")
        return value

    parse.__name__ = name or f"number > {low:g}"
    return parse


def float_at_least(low: float, name: str = "") -> Callable[[str], float]:
    """Finite numbers >= ``low``."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {value:g}")
        return value

    parse.__name__ = name or f"number >= {low:g}"
    return parse


positive_int = int_at_least(1, "positive integer")
non_negative_int = int_at_least(0, "non-negative integer")
positive_float = float_above(0.0, "positive number")
non_negative_float = float_at_least(0.0, "non-negative number")
seed = int_in(0, SEED_LIMIT, "seed", "2^63")
port = int_in(1, 65536, "port")


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
