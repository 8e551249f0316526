"""The offline stage's entry point, kept here beside the design's ``precompute/`` stage: the same as
``expotion features`` (see ``expotion features --help``).

    python precompute/extract.py --manifest data/manifest.csv --cache cache [--profile real|tiny] [--device cuda]
"""
from __future__ import annotations

import sys

from expotion.cli.main import main as expotion


def main(argv: list[str] | None = None) -> int:
    return expotion(["features", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
