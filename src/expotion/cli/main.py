"""The ``expotion`` command: one entry point for every stage.

    expotion features  ...   precompute features into HDF5 shards (src/expotion/precompute/command.py)
    expotion caption   ...   a generated caption for every cached clip (music, scene, flamingo or fused)
    expotion train     ...   LightningCLI, arguments passed through unchanged (``expotion train fit --config ...``)
    expotion generate  ...   music for a video, or for every clip of a cached split
    expotion live      ...   music that follows a camera, or a video file played as one, while it plays
    expotion eval      ...   the Table 1 metrics
    expotion experiment run|slurm|table FILE   every row of a table: train, generate, evaluate
    expotion weights   check | make-tiny
    expotion cache     inspect PATH
    expotion app       ...   the browser app (requirements/app.txt)
    expotion study     results STUDY.yaml

``features`` and ``generate`` share one group of options for the models and the device
(``--profile``, ``--weights-dir``, ``--tiny-dir``, ``--device``); ``eval`` takes ``--weights-dir``
and ``--device`` from the same group, and ``app`` the whole group.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from expotion.core import option_types as opt
from expotion.core.known_warnings import silence_known_warnings
from expotion.core.tiny import DEFAULT_DIR as TINY_DIR

# subcommands offered only when their package is part of the install
OPTIONAL_SUBSYSTEMS = {
    "app": "expotion.app.server",
    "study": "expotion.app.results",
}

# modules whose import registers their weight files
WEIGHT_MODULES = (
    "expotion.musicgen.loading",
    "expotion.extractors.marlin",
    "expotion.extractors.motionformer",
    "expotion.extractors.raft",
    "expotion.extractors.clip",
    "expotion.evaluation.models",
    "expotion.captioners.models",
)


def extractor_config(args: argparse.Namespace):
    """The feature extractors the shared options select (MusicGen and RAFT variant overridable)."""
    from expotion.extractors.bank import profile_config

    chosen = {"musicgen": args.musicgen, "raft_variant": args.raft_variant} if args.profile == "real" else {}
    return profile_config(args.profile, args.weights_dir, args.tiny_dir, args.device,
                          **{k: v for k, v in chosen.items() if v})


# ---- features ---------------------------------------------------------------------------------
def features(args: argparse.Namespace) -> int:
    from expotion.precompute import command as extract

    try:
        return extract.run(args, extractor_config(args))
    except extract.ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def optional_import(module: str):
    """The module, or None when it is not part of this install (a missing dependency of it still raises)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if not err.name or not module.startswith(err.name):
            raise
        return None


# ---- weights ----------------------------------------------------------------------------------
def import_weight_modules() -> None:
    for module in WEIGHT_MODULES:
        optional_import(module)


def weights_check(args: argparse.Namespace) -> int:
    """List every registered weight file: present (with path) or missing (with where it goes)."""
    from expotion.core.weights import REGISTRY, weights_dir

    import_weight_modules()
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
    return 1 if missing else 0  # scripts can test for a complete set


def weights_make_tiny(args: argparse.Namespace) -> int:
    """Write small random stand-ins in the released formats (see :mod:`expotion.core.tiny`)."""
    from expotion.core.tiny import TINY, make_tiny, tiny_path

    keys = tuple(k.strip() for k in args.models.split(",") if k.strip())
    unknown = sorted(set(keys) - set(TINY))
    if unknown:
        print(f"error: unknown tiny checkpoints {unknown}; choose from {', '.join(TINY)}", file=sys.stderr)
        return 2
    written = make_tiny(args.dir, keys, seed=args.seed, overwrite=args.overwrite)
    for key in keys:
        print(f"  {'written' if key in written else 'kept   '}  {key:20s} {tiny_path(args.dir, key)}")
    return 0


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    from expotion.core.tiny import TINY

    sub = parser.add_subparsers(dest="weights_command", required=True)
    check = sub.add_parser("check", help="list present and missing weight files (exit status 1 when one is missing)")
    check.add_argument("--weights-dir", type=Path, default=None)
    check.set_defaults(func=weights_check)
    tiny = sub.add_parser("make-tiny", help="write small random models in the released formats (demo, tests)")
    tiny.add_argument("dir", type=Path, nargs="?", default=TINY_DIR, help=f"where to write them (default {TINY_DIR})")
    tiny.add_argument("--models", default=",".join(TINY), help=f"comma-separated subset of {','.join(TINY)}")
    tiny.add_argument("--seed", type=opt.seed, default=0)
    tiny.add_argument("--overwrite", action="store_true", help="rewrite stand-ins that exist")
    tiny.set_defaults(func=weights_make_tiny)


def first_line(module) -> str:
    """A module docstring's first line as argparse help (which treats ``%`` as a format character)."""
    line = (module.__doc__ or "").strip().split("\n")[0]
    return line.split("``: ", 1)[-1].replace("%", "%%")  # "``expotion x``: does y" -> "does y"


# ---- the command ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from expotion.evaluation import cli as evaluation
    from expotion.cli import cache, caption, generate, live
    from expotion.experiments import command as experiment
    from expotion.precompute import command as extract

    parser = argparse.ArgumentParser(prog="expotion", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("features", help=first_line(extract))
    extract.add_arguments(p)
    opt.add_model_arguments(p)
    p.set_defaults(func=features)

    p = sub.add_parser("caption", help=first_line(caption))
    caption.add_arguments(p)
    opt.add_model_arguments(p, profiles=False)
    p.set_defaults(func=caption.run)

    sub.add_parser("train", help="LightningCLI (fit, validate, ...): `expotion train fit --config CONFIG.yaml`",
                   add_help=False)

    p = sub.add_parser("generate", help=first_line(generate))
    generate.add_arguments(p)
    opt.add_model_arguments(p, from_checkpoint=True)
    p.set_defaults(func=generate.run)

    p = sub.add_parser("live", help=first_line(live))
    live.add_arguments(p)
    opt.add_model_arguments(p, from_checkpoint=True)
    p.set_defaults(func=live.run)

    p = sub.add_parser("eval", help=first_line(evaluation))
    evaluation.add_arguments(p)
    opt.add_model_arguments(p, profiles=False)
    p.set_defaults(func=evaluation.run)

    p = sub.add_parser("experiment", help=first_line(experiment))
    experiment.add_arguments(p)

    add_weights_arguments(sub.add_parser("weights", help="pretrained weight files: check, make-tiny"))

    p = sub.add_parser("cache", help="the feature cache: inspect")
    cache.add_arguments(p)
    p.set_defaults(func=cache.run)

    for name, module in OPTIONAL_SUBSYSTEMS.items():
        mod = optional_import(module)
        if mod is None:
            continue
        p = sub.add_parser(name, help=first_line(mod))
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


INTERRUPTED = 130  # the shell's status for a command ended by SIGINT


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # before the subcommands' imports, so that commands can report their whole time
    silence_known_warnings()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["train"]:
            from expotion.cli.train import run as train

            return train(argv[1:])  # LightningCLI parses everything after `train`, unchanged
        args = build_parser().parse_args(argv)
        args.started = started
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\ninterrupted: `expotion {' '.join(argv[:1])}` stopped. Every output is written whole or not at "
              "all, so what is finished is kept; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED



if __name__ == "__main__":
    sys.exit(main())
