"""Evaluate generated music against reference audio: the paper's Table 1 metrics plus chroma similarity.

``expotion eval --generated DIR [DIR ...] --reference DIR [--cache SPLIT] [--videos DIR]
[--captions FILE] --out RESULTS_DIR [--weights-dir DIR] [--device D] [--workers N]`` writes
``metrics.json``, ``per_clip.csv`` and ``results.md`` (and, with
``--tensorboard``, scalars). Several generated directories (several systems on
the same clips) give one ``results.md`` with a row each, and each system's
``metrics.json``, ``per_clip.csv`` (and plots) in ``RESULTS_DIR/<label>/``. A metric whose model weights or inputs are
missing is reported as missing with the reason; the others are still
computed. Clips left out of a metric, and suspicious clips (silent, cut
short), are listed on the console and in ``results.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from expotion.core import atomic
from expotion.core import option_types as opt
from expotion.core.devices import usable_device
from expotion.core.weights import weights_dir
from expotion.data.captions import MANIFEST
from expotion.evaluation import embed, metrics, plots, report, stage_one
from expotion.evaluation.files import (GENERATION_SUMMARY, VIDEO_EXTENSIONS, InputError, Pairing, a_few,
                                       captions_for_clips, files_by_id, generation_captions, pair_directories,
                                       read_cache_split, read_captions)
from expotion.evaluation.output_names import check_label
from expotion.evaluation.video import VideoClip

DEFAULT_BATCH_SIZE = 8


def default_cache_dir() -> Path:
    return Path(os.environ.get("EXPOTION_EVAL_CACHE", "cache/eval"))


def parse_device(text: str) -> torch.device:
    """A torch device the evaluation models can run on here; CUDA asked for but absent is an input error."""
    try:
        return usable_device(text)
    except ValueError as err:
        raise InputError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", type=Path, nargs="+", required=True,
                        help="directory of generated audio (clip id = file stem); several: one table row each")
    parser.add_argument("--reference", type=Path, required=True, help="directory of reference audio with the same ids")
    parser.add_argument("--cache", type=Path, default=None, metavar="SPLIT",
                        help="the cached split the clips were generated from (e.g. cache/mine/test): gives each clip's "
                             "caption and its video span in the source recording")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="with --cache: where the source videos are, if not at the data root the cache records")
    parser.add_argument("--videos", type=Path, default=None,
                        help="directory of per-clip videos named <clip_id>.mp4 (e.g. generate's --mux-dir); "
                             "these take precedence over --cache's spans")
    parser.add_argument("--captions", type=Path, default=None,
                        help="captions by clip or recording id: the manifest (CSV or JSONL), JSON, CSV with id,caption "
                             "columns, or id<TAB>caption lines; takes precedence over --cache's captions")
    parser.add_argument("--cache-captions", default=None, metavar="SOURCE",
                        help="which of --cache's captions the text-audio metrics read: manifest, generated:<kind> "
                             "(written by `expotion caption`, e.g. generated:music) or generic (default: the ones "
                             "the music was generated from, as the generated folder's summary.json records, else "
                             "manifest)")
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default $EXPOTION_EVAL_CACHE or ./cache/eval)")
    parser.add_argument("--metrics", default=",".join(metrics.GROUPS),
                        help=f"comma-separated subset of {','.join(metrics.GROUPS)} (default: all)")
    parser.add_argument("--label", nargs="+", default=None,
                        help="row labels in the Markdown table, one per generated directory (default: their names)")
    parser.add_argument("--clap-model", default=None,
                        help="a CLAP checkpoint directory, or a hub name in the HF cache, instead of laion/larger_clap_music")
    parser.add_argument("--is-splits", type=opt.positive_int, default=metrics.DEFAULT_IS_SPLITS,
                        help="number of IS splits (capped at the number of clips)")
    parser.add_argument("--seed", type=opt.seed, default=metrics.DEFAULT_SEED, help="seed of the IS split shuffle")
    parser.add_argument("--beat-trim", type=opt.non_negative_float, default=metrics.rhythm.DEFAULT_TRIM_S,
                        help="drop beats before this time (s) on both sides before beat F1")
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to RESULTS_DIR/tensorboard")
    parser.add_argument("--batch-size", type=opt.positive_int, default=DEFAULT_BATCH_SIZE,
                        help="clips embedded together; a forward pass takes at most this many 10 s windows "
                             "(VGGish: ten times as many 0.96 s frames)")
    parser.add_argument("--workers", type=opt.positive_int, default=1,
                        help="processes for stage 1 (decoding, optical flow, onsets, beats, embeddings), one thread "
                             "each; the results do not depend on it")
    parser.add_argument("--plots", action="store_true",
                        help="also write a figure per clip (motion, onsets, beats, matched peaks) and a summary figure "
                             "to RESULTS_DIR/plots, linked from results.md")


def parse_groups(text: str) -> set[str]:
    groups = {g.strip() for g in text.split(",") if g.strip()}
    unknown = groups - set(metrics.GROUPS)
    if unknown or not groups:
        raise InputError(f"--metrics: unknown {sorted(unknown)}; choose from {', '.join(metrics.GROUPS)}")
    return groups


def extractors_for(groups: set[str], have_captions: bool, have_videos: bool) -> list[str]:
    """The stage-1 extractors the requested metrics need (those of the caption and video groups only when their
    inputs exist), and those every run needs."""
    usable = {g for g in groups if (have_captions or g != "text_audio") and (have_videos or g not in metrics.VIDEO_GROUPS)}
    return sorted({e for g in usable for e in metrics.GROUP_EXTRACTORS[g]} | set(metrics.ALWAYS))


def log(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def scored_captions(args: argparse.Namespace, generated: Path) -> tuple[str, str]:
    """Which of ``--cache``'s captions a generated folder is scored against, and what chose them: ``--cache-captions``,
    else those its music was generated from (by default, those its checkpoint trained on), else the manifest's."""
    if args.cache_captions is not None:
        return args.cache_captions, "--cache-captions"
    recorded = generation_captions(generated)
    if recorded is not None:
        return recorded, f"the captions the music was generated from, per {Path(generated) / GENERATION_SUMMARY}"
    return MANIFEST, "the default"


def clip_inputs(args: argparse.Namespace, pairing: Pairing,
                source: str = MANIFEST) -> tuple[dict[str, VideoClip], dict[str, str]]:
    """Each paired clip's video and caption: ``--videos`` and ``--captions`` first, then what ``--cache`` records
    (its captions of ``source``).

    An input that matches none of the paired clips is an error, never an empty metric.
    """
    ids = pairing.ids
    cached = read_cache_split(args.cache, args.data_root, source) if args.cache else {}
    if cached and not set(ids) & set(cached):
        raise InputError(f"{args.cache}: none of its {len(cached)} clips is among the {len(ids)} paired clips. "
                         f"Cached clips: {a_few(cached)}; paired clips: {a_few(ids)}")
    videos = {i: VideoClip(cached[i].source, cached[i].start_s, cached[i].duration_s) for i in ids if i in cached}
    if videos and not any(v.path.is_file() for v in videos.values()):
        example = next(iter(videos.values())).path
        raise InputError(f"{args.cache}: none of the source videos it names exists (e.g. {example}); "
                         "give --data-root the folder the manifest's video paths are relative to")
    if args.videos:
        files = files_by_id(args.videos, VIDEO_EXTENSIONS)
        if not set(ids) & set(files):
            raise InputError(f"{args.videos}: none of its {len(files)} videos is named after one of the {len(ids)} "
                             f"paired clips. Videos: {a_few(files)}; paired clips: {a_few(ids)}")
        videos.update({i: VideoClip(files[i]) for i in ids if i in files})
    if args.captions:
        captions = captions_for_clips(ids, read_captions(args.captions), args.captions)
    else:
        captions = {i: cached[i].caption.strip() for i in ids if i in cached and cached[i].caption.strip()}
    return videos, captions


def system_labels(args: argparse.Namespace) -> list[str]:
    """One distinct row label per generated directory (also the name of its results folder when there are several)."""
    labels = [check_label(label) for label in args.label or [Path(g).resolve().name for g in args.generated]]
    if len(labels) != len(args.generated):
        raise InputError(f"--label: {len(labels)} labels for {len(args.generated)} generated directories")
    if len(set(labels)) != len(labels):
        raise InputError(f"--label: the systems need distinct labels, got {labels} (pass --label A B ...)")
    return labels


def run(args: argparse.Namespace) -> int:
    try:
        groups = parse_groups(args.metrics)
        device = parse_device(args.device)
        labels = system_labels(args)
        pairings = [pair_directories(g, args.reference) for g in args.generated]
        sources = [scored_captions(args, g) for g in args.generated]
        inputs = [clip_inputs(args, pairing, source) for pairing, (source, _) in zip(pairings, sources)]
    except InputError as err:
        print(f"expotion eval: {err}", file=sys.stderr)
        return 2
    for label, pairing, (videos, captions), (source, why) in zip(labels, pairings, inputs, sources):
        spans = sum(v.is_span for v in videos.values())
        log(f"{label + ': ' if len(labels) > 1 else ''}{len(pairing.ids)} paired clips; {len(videos)} videos "
            f"({spans} cut from source recordings); {len(captions)} captions"
            + (f" (the cache's {source} captions: {why})" if args.cache and not args.captions else ""))
    log(f"models on {device}, batches of {args.batch_size}")

    names = extractors_for(groups, any(c for _, c in inputs), any(v for v, _ in inputs))
    cache_root = args.cache_dir or default_cache_dir()
    wdir = weights_dir(args.weights_dir)
    overrides = {"clap_music": args.clap_model} if args.clap_model else None
    states = embed.prepare(names, wdir, embed.FileHashes(cache_root / "file-hashes.json"), overrides)
    for name, state in states.items():
        if state.status != "ready":
            log(f"{name}: {state.status}: {state.reason}")
    audio = [p.generated[i] for p in pairings for i in p.ids] + [p.reference[i] for p in pairings for i in p.ids]
    store = stage_one.run(embed.Inputs(audio=list(dict.fromkeys(audio)),
                                       videos=list(dict.fromkeys(v for videos, _ in inputs for v in videos.values())),
                                       captions=sorted({c for _, captions in inputs for c in captions.values()})),
                          states, embed.EmbeddingCache(cache_root), log=log, device=device, batch_size=args.batch_size,
                          workers=args.workers)

    options = metrics.Options(is_splits=args.is_splits, seed=args.seed, beat_trim_s=args.beat_trim)
    out = Path(args.out)
    settings = {  # what every system's metrics.json records about the run
        "reference": str(args.reference), "cache": str(args.cache) if args.cache else None,
        "data_root": str(args.data_root) if args.data_root else None,
        "videos": str(args.videos) if args.videos else None, "captions": str(args.captions) if args.captions else None,
        "weights_dir": str(wdir), "cache_dir": str(cache_root), "metrics_requested": sorted(groups),
        "device": str(device), "batch_size": args.batch_size,
    }
    systems = [evaluate_system(args, label, generated, pairing, videos, captions, store, states, groups, options,
                               {**settings, "cache_captions": source if args.cache and not args.captions else None})
               for label, generated, pairing, (videos, captions), (source, _)
               in zip(labels, args.generated, pairings, inputs, sources)]
    table = report.markdown(systems, options)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "results.md", table)
    print(table)
    written = [out / "results.md"] + [out / s.folder / name for s in systems for name in ("metrics.json", "per_clip.csv")]
    log(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def evaluate_system(args: argparse.Namespace, label: str, generated: Path, pairing: Pairing,
                    videos: dict[str, VideoClip], captions: dict[str, str], store, states, groups: set[str],
                    options: metrics.Options, settings: dict) -> report.System:
    """One generated directory's metrics, written to its folder (the results folder itself when it is the only one);
    ``settings`` are the run's, recorded in its ``metrics.json``."""
    evaluation = metrics.evaluate(pairing, store, groups, videos, captions, options)
    folder = "" if len(args.generated) == 1 else label
    out = Path(args.out) / folder
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "label": label, "generated": str(generated), **settings,
        "n_videos": len(videos), "n_video_spans": sum(v.is_span for v in videos.values()), "n_captions": len(captions),
        "n_pairs": len(pairing.ids), "clip_ids": pairing.ids,
        "only_generated": pairing.only_generated, "only_reference": pairing.only_reference,
    }
    report.write_json(out / "metrics.json", evaluation, states, options, summary, sys.argv)
    report.write_csv(out / "per_clip.csv", evaluation)
    figures = plots.write_figures(out / "plots", evaluation, label, log=log) if args.plots else {}
    if args.tensorboard:
        report.write_tensorboard(out / "tensorboard", evaluation)
    flagged = len(evaluation.excluded) + len(pairing.only_generated) + len(pairing.only_reference)
    if flagged or evaluation.suspicious:
        log(f"warning: {label}: {flagged} clips left out of some metric, {len(evaluation.suspicious)} suspicious "
            "(listed above and in results.md)")
    return report.System(label, evaluation, pairing, figures, folder)
