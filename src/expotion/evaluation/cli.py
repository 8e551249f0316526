"""Evaluate generated music against reference audio: the paper's Table 1 metrics plus chroma similarity.

``expotion eval --generated DIR --reference DIR [--videos DIR] [--captions FILE]
--out RESULTS_DIR [--weights-dir DIR]`` writes ``metrics.json``,
``per_clip.csv`` and ``results.md`` (and, with ``--tensorboard``, scalars).
A metric whose model weights or inputs are missing is reported as missing
with the reason; the others are still computed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..weights import weights_dir
from . import embed, metrics, report
from .files import VIDEO_EXTENSIONS, InputError, files_by_id, pair_directories, read_captions


def default_cache_dir() -> Path:
    return Path(os.environ.get("EXPOTION_EVAL_CACHE", "cache/eval"))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", type=Path, required=True, help="directory of generated audio (clip id = file stem)")
    parser.add_argument("--reference", type=Path, required=True, help="directory of reference audio with the same ids")
    parser.add_argument("--videos", type=Path, default=None, help="directory of the clips' videos (for video–audio)")
    parser.add_argument("--captions", type=Path, default=None,
                        help="captions by clip id: JSON, CSV with id,caption columns (e.g. the manifest), or id<TAB>caption")
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="weights directory (default $EXPOTION_WEIGHTS or ./weights)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default $EXPOTION_EVAL_CACHE or ./cache/eval)")
    parser.add_argument("--metrics", default=",".join(metrics.GROUPS),
                        help=f"comma-separated subset of {','.join(metrics.GROUPS)} (default: all)")
    parser.add_argument("--label", default=None, help="row label in the Markdown table (default: the generated directory's name)")
    parser.add_argument("--clap-model", default=None,
                        help="a CLAP checkpoint directory, or a hub name in the HF cache, instead of laion/larger_clap_music")
    parser.add_argument("--is-splits", type=positive_int, default=metrics.DEFAULT_IS_SPLITS,
                        help="number of IS splits (capped at the number of clips)")
    parser.add_argument("--seed", type=int, default=metrics.DEFAULT_SEED, help="seed of the IS split shuffle")
    parser.add_argument("--beat-trim", type=float, default=metrics.rhythm.DEFAULT_TRIM_S,
                        help="drop beats before this time (s) on both sides before beat F1")
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to RESULTS_DIR/tensorboard")


def parse_groups(text: str) -> set[str]:
    groups = {g.strip() for g in text.split(",") if g.strip()}
    unknown = groups - set(metrics.GROUPS)
    if unknown or not groups:
        raise InputError(f"--metrics: unknown {sorted(unknown)}; choose from {', '.join(metrics.GROUPS)}")
    return groups


def extractors_for(groups: set[str], have_captions: bool, have_videos: bool) -> list[str]:
    """The stage-1 extractors the requested metrics need; CLAP and LanguageBind only when their inputs exist."""
    skip = set()
    if not have_captions:
        skip |= set(metrics.GROUP_EXTRACTORS["text_audio"])
    if not have_videos:
        skip |= set(metrics.GROUP_EXTRACTORS["video_audio"])
    return sorted({e for g in groups for e in metrics.GROUP_EXTRACTORS[g]} - skip)


def log(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        groups = parse_groups(args.metrics)
        pairing = pair_directories(args.generated, args.reference)
        videos = files_by_id(args.videos, VIDEO_EXTENSIONS) if args.videos else {}
        captions = read_captions(args.captions) if args.captions else {}
    except InputError as err:
        print(f"expotion eval: {err}", file=sys.stderr)
        return 2
    videos = {i: videos[i] for i in pairing.ids if i in videos}
    captions = {i: captions[i] for i in pairing.ids if i in captions}
    log(f"{len(pairing.ids)} paired clips; {len(videos)} videos; {len(captions)} captions")
    for side, ids in (("generated", pairing.only_generated), ("reference", pairing.only_reference)):
        if ids:
            log(f"left out, only in {side}: {', '.join(ids)}")

    names = extractors_for(groups, bool(captions), bool(videos))
    cache_root = args.cache_dir or default_cache_dir()
    wdir = weights_dir(args.weights_dir)
    overrides = {"clap_music": args.clap_model} if args.clap_model else None
    states = embed.prepare(names, wdir, embed.FileHashes(cache_root / "file-hashes.json"), overrides)
    for name, state in states.items():
        if state.status != "ready":
            log(f"{name}: {state.status}: {state.reason}")
    inputs = embed.Inputs(
        audio=[pairing.generated[i] for i in pairing.ids] + [pairing.reference[i] for i in pairing.ids],
        videos=list(videos.values()), captions=sorted(set(captions.values())))
    store = embed.run(inputs, states, embed.EmbeddingCache(cache_root), log=log)

    options = metrics.Options(is_splits=args.is_splits, seed=args.seed, beat_trim_s=args.beat_trim)
    evaluation = metrics.evaluate(pairing, store, groups, videos, captions, options)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = args.label or Path(args.generated).resolve().name
    summary = {
        "generated": str(args.generated), "reference": str(args.reference),
        "videos": str(args.videos) if args.videos else None, "captions": str(args.captions) if args.captions else None,
        "weights_dir": str(wdir), "cache_dir": str(cache_root), "metrics_requested": sorted(groups),
        "n_pairs": len(pairing.ids), "clip_ids": pairing.ids,
        "only_generated": pairing.only_generated, "only_reference": pairing.only_reference,
    }
    report.write_json(out / "metrics.json", evaluation, states, options, summary, sys.argv)
    report.write_csv(out / "per_clip.csv", evaluation)
    table = report.markdown(evaluation, label, len(pairing.ids), options)
    (out / "results.md").write_text(table)
    if args.tensorboard:
        report.write_tensorboard(out / "tensorboard", evaluation)
    print(table)
    log(f"wrote {out / 'metrics.json'}, {out / 'per_clip.csv'}, {out / 'results.md'}")
    return 0
