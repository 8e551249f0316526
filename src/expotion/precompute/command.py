"""``expotion features``: write MARLIN, Synchformer, RAFT, CLIP and Farneback features, EnCodec tokens
and T5 text embeddings of every clip in a manifest to HDF5 shards.

    expotion features --manifest data/manifest.csv --cache cache [--profile real|tiny] [--device cuda]
        [--extractors marlin,synchformer,raft,codes,t5] [--workers 2] [--threads 1] [--keep-tail]
        [--synchformer-stride 8] [--face-tracking smooth|causal]

Interrupting is safe: rerun the same command and finished shards are kept. A
second run on the same cache waits for the first. Once every shard of the run's
plan is written, the shards outside it (of another --recordings-per-shard, or of
a split no longer in the manifest) are removed, each with a warning.

Across machines, run the same command on every node: node r of n writes the
shards k with k mod n == r. The node rank and count come from --node-rank and
--num-nodes, torchrun (RANK/WORLD_SIZE) or SLURM (SLURM_ARRAY_TASK_ID/COUNT,
SLURM_PROCID/SLURM_NTASKS). The last node to finish writes summary.json;
--merge-summary writes it afterwards without extracting anything.

Exit status: 0 when every split got clips (or this node's shards are done and
others are still missing), 2 for unusable arguments or manifest, 3 when a split
got no clips (the cache of the other splits is complete), 4 when --merge-summary
finds shards missing.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from expotion.core import option_types as opt
from expotion.core.nodes import node_share
from expotion.core.rates import DEFAULT_RATES
from expotion.core.weights import MissingWeightsError
from expotion.data.manifest import ManifestError
from expotion.data.shards import CacheError
from expotion.extractors.bank import ExtractorConfig, default_extractors, extractor_names
from expotion.extractors.face import FACE_TRACKINGS
from expotion.precompute.pipeline import PrecomputeConfig, merge_summary
from expotion.precompute.pipeline import run as run_pipeline


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True, help="CSV or JSONL, one row per recording")
    p.add_argument("--cache", type=Path, required=True, help="output directory (<cache>/<split>/shard-NNNNN.h5)")
    p.add_argument("--data-root", type=Path, default=None, help="root of the manifest's paths (default: its folder)")
    p.add_argument("--musicgen", default=None, help="MusicGen hub name or local directory (real default facebook/musicgen-small)")
    p.add_argument("--raft-variant", choices=("small", "large"), default=None)
    p.add_argument("--extractors", default=",".join(default_extractors()),
                   help=f"comma-separated subset of {','.join(extractor_names())} (default: the streams registered "
                        f"as default, {','.join(default_extractors())}; train a method on the streams it reads)")
    p.add_argument("--clip-seconds", type=opt.positive_float, default=10.0)
    p.add_argument("--keep-tail", action="store_true",
                   help="also take a last clip ending with the recording, overlapping the one before it")
    p.add_argument("--recordings-per-shard", type=opt.positive_int, default=4)
    p.add_argument("--workers", type=opt.positive_int, default=1,
                   help="processes; with --device cuda, worker k runs on GPU k mod n_gpus")
    p.add_argument("--threads", type=opt.positive_int, default=1,
                   help="torch threads per worker; float16 features depend on it (not on --workers)")
    p.add_argument("--synchformer-stride", type=opt.positive_int, default=DEFAULT_RATES.synchformer_stride,
                   help="frames (at 25 fps) between the starts of 16-frame Synchformer segments: "
                        "8 as Synchformer itself (default), 5 as the paper states")
    p.add_argument("--face-tracking", choices=FACE_TRACKINGS, default="smooth",
                   help="how detected faces are followed between detections: smooth (default) looks up to a "
                        "second ahead; causal reads only earlier frames, as live extraction must (train a "
                        "live-capable model on a cache written with it)")
    p.add_argument("--node-rank", type=opt.non_negative_int, default=None,
                   help="this machine's rank among --num-nodes (default: from torchrun or SLURM, else 0 of 1)")
    p.add_argument("--num-nodes", type=opt.positive_int, default=None,
                   help="machines sharing the shards (shard k goes to k mod N)")
    p.add_argument("--merge-summary", action="store_true",
                   help="only write summary.json from the shards all nodes wrote (fails naming missing shards)")


def run(args: argparse.Namespace, extractors: ExtractorConfig) -> int:
    """Precompute with ``extractors`` (the profile the shared options chose)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    names = tuple(n.strip() for n in args.extractors.split(",") if n.strip())
    node = node_share(args.node_rank, args.num_nodes)
    extractors = replace(extractors, face_tracking=args.face_tracking)
    cfg = PrecomputeConfig(manifest=args.manifest, cache=args.cache, extractors=extractors, names=names,
                           data_root=args.data_root, clip_seconds=args.clip_seconds,
                           recordings_per_shard=args.recordings_per_shard, workers=args.workers,
                           threads=args.threads, keep_tail=args.keep_tail, node=node,
                           rates=replace(DEFAULT_RATES, synchformer_stride=args.synchformer_stride))
    if args.merge_summary:
        try:
            summary = merge_summary(cfg)
        except CacheError as err:
            print(f"error: {err}", file=sys.stderr)
            return 4
    else:
        if node.count > 1:
            print(f"{node}: writes shards k with k mod {node.count} == {node.rank}", flush=True)
        summary = run_pipeline(cfg)
    print(summary.report())
    return 3 if summary.empty_splits else 0


ERRORS = (ManifestError, MissingWeightsError, CacheError, ValueError)
