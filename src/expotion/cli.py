"""The ``expotion`` command: ``weights check`` here; other subcommands live with their subsystems."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .known_warnings import silence_known_warnings  # noqa: E402

# subcommand -> module with ``add_arguments(parser)`` and ``run(args) -> int``
SUBSYSTEMS = {
    "generate": "expotion.generate",
    "eval": "expotion.evaluation.cli",
    "app": "expotion.app.server",
    "study": "expotion.app.results",
}

# modules whose import registers their weight files
WEIGHT_MODULES = (
    "expotion.musicgen",
    "expotion.extractors.marlin",
    "expotion.extractors.motionformer",
    "expotion.extractors.raft",
    "expotion.evaluation.models",
)


def weights_check(args: argparse.Namespace) -> int:
    """List every registered weight file: present (with path) or missing (with where it goes)."""
    from .weights import REGISTRY, weights_dir

    for module in WEIGHT_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if not err.name or not module.startswith(err.name):
                raise
    wdir = weights_dir(args.weights_dir)
    missing = 0
    print(f"weights directory: {wdir.resolve()}")
    for spec in sorted(REGISTRY.values(), key=lambda s: s.key):
        found = spec.find(wdir)
        if found:
            print(f"  present  {spec.key:28s} {found}")
        else:
            missing += 1
            print(f"  MISSING  {spec.key:28s} {spec.filename}\n           goes in: {spec.where}\n           needed by: {spec.needed_by}")
    print(f"{len(REGISTRY) - missing} present, {missing} missing")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expotion")
    sub = parser.add_subparsers(dest="command", required=True)
    weights = sub.add_parser("weights", help="pretrained weight files")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    check = wsub.add_parser("check", help="list present and missing weight files")
    check.add_argument("--weights-dir", type=Path, default=None)
    check.set_defaults(func=weights_check)
    for name, module in SUBSYSTEMS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue
            raise
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().split("\n")[0])
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # before the subcommands' imports, so that commands can report their whole time
    silence_known_warnings()
    args = build_parser().parse_args(argv)
    args.started = started
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
