"""The offline stage: write MARLIN, Synchformer and RAFT features, EnCodec tokens and T5
text embeddings of every clip in a manifest to HDF5 shards.

    python precompute/extract.py --manifest data/manifest.csv --cache cache [--profile real|tiny]
        [--extractors marlin,synchformer,raft,codes,t5] [--workers 2] [--threads 1] [--keep-tail]

Interrupting is safe: rerun the same command and finished shards are kept. A
second run on the same cache waits for the first. Exit status: 0 when every
split got clips, 2 for unusable arguments or manifest, 3 when a split got no
clips (the cache of the other splits is complete).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from expotion.cache import CacheError  # noqa: E402
from expotion.features import EXTRACTORS, real_profile, tiny_profile  # noqa: E402
from expotion.known_warnings import silence_known_warnings  # noqa: E402
from expotion.manifest import ManifestError  # noqa: E402
from expotion.pipeline import PrecomputeConfig, run  # noqa: E402
from expotion.weights import MissingWeightsError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, required=True, help="CSV or JSONL, one row per recording")
    p.add_argument("--cache", type=Path, required=True, help="output directory (<cache>/<split>/shard-NNNNN.h5)")
    p.add_argument("--data-root", type=Path, default=None, help="root of the manifest's paths (default: its folder)")
    p.add_argument("--profile", choices=("real", "tiny"), default="real",
                   help="real: released weights; tiny: small random models of the same classes (offline demo)")
    p.add_argument("--weights-dir", type=Path, default=None, help="real profile: weights directory (default $EXPOTION_WEIGHTS or ./weights)")
    p.add_argument("--tiny-dir", type=Path, default=Path("cache/tiny-weights"), help="tiny profile: where its weights are written")
    p.add_argument("--musicgen", default=None, help="MusicGen hub name or local directory (real default facebook/musicgen-small)")
    p.add_argument("--raft-variant", choices=("small", "large"), default=None)
    p.add_argument("--extractors", default=",".join(EXTRACTORS), help=f"comma-separated subset of {','.join(EXTRACTORS)}")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--keep-tail", action="store_true",
                   help="also take a last clip ending with the recording, overlapping the one before it")
    p.add_argument("--recordings-per-shard", type=int, default=4)
    p.add_argument("--workers", type=int, default=1, help="processes (one per GPU when GPUs are present)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker; float16 features depend on it (not on --workers)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    silence_known_warnings()
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    overrides = {k: v for k, v in {"musicgen": args.musicgen, "raft_variant": args.raft_variant}.items() if v}
    try:
        ext = tiny_profile(args.tiny_dir) if args.profile == "tiny" else real_profile(args.weights_dir, **overrides)
        names = tuple(n.strip() for n in args.extractors.split(",") if n.strip())
        cfg = PrecomputeConfig(manifest=args.manifest, cache=args.cache, extractors=ext, names=names,
                               data_root=args.data_root, clip_seconds=args.clip_seconds,
                               recordings_per_shard=args.recordings_per_shard, workers=args.workers,
                               threads=args.threads, keep_tail=args.keep_tail)
        summary = run(cfg)
    except (ManifestError, MissingWeightsError, CacheError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.report())
    return 3 if summary.empty_splits else 0


if __name__ == "__main__":
    sys.exit(main())
