"""Generate music for a video (a 32 kHz wav, optionally muxed into the video), or for every clip of a
cached split (batch mode, one wav per clip id, for evaluation).

    expotion generate --video V.mp4 --prompt "..." [--checkpoint adaptor.pt] [--musicgen DIR|NAME]
                      --out out.wav [--mux out.mp4] [--plot] [--seed S] [--cfg 3.0] [--top-k 250] [--device cuda]
    expotion generate --cache cache/demo/val --out-dir outputs/val [--mux-dir outputs/val-videos]
                      [--batch-size 8] [--devices N [--num-nodes M]]

Without --checkpoint this is plain text-only MusicGen (the paper's baseline row, when prompted with its fused
captions through --prompts). The checkpoint names its method (Expotion's adaptor, or the CLIP + flow conditioner),
which decides the video streams extracted and how they reach MusicGen. A CLIP + flow model trained without text
(``text: none``) needs no --prompt and ignores one. Numeric options are checked before any model loads.

The command is a thin layer over the library API of :mod:`expotion.inference`, which takes no argparse objects,
for notebooks and the web app::

    models = load_models(ModelSettings(checkpoint=Path("runs/x/adaptor.pt"), profile="tiny"))
    result = generate_for_video(models, Path("v.mp4"), "slow jazz", Path("out.wav"), mux=Path("out.mp4"),
                                sampling=SamplingSettings(seed=3), progress=print)

``progress(stage, done, total)`` is called as work advances; the stages are
``"load"``, ``"faces"``, ``"features"``, ``"generate"`` (sampling steps over all
windows), ``"clips"`` and ``"videos"``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from expotion.core import option_types as opt
from expotion.core.atomic import write_text
from expotion.core.outputs import OutputError
from expotion.core.weights import MissingWeightsError
from expotion.data.captions import GENERIC, GENERIC_PROMPT
from expotion.data.manifest import ManifestError, parse_face_box
from expotion.data.media import MediaError
from expotion.data.shards import CacheError
from expotion.inference import generation_window
from expotion.inference.batch import DEFAULT_BATCH_SIZE, BatchResult, Prompts, generate_for_cache
from expotion.inference.distributed import generate_on_devices
from expotion.inference.models import ADAPTOR_DTYPES, DEFAULT_MUSICGEN, ModelSettings, SamplingSettings, load_models
from expotion.inference.outputs import check_batch_folders, check_video_outputs
from expotion.inference.single import generate_for_video
from expotion.musicgen.windows import GenerationError, check_prompt
from expotion.solvers.export import CheckpointError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="a face/upper-body video")
    src.add_argument("--cache", type=Path, help="batch mode: a cached split directory, e.g. cache/demo/val")
    p.add_argument("--prompt", help="text prompt (not needed by a CLIP + flow model without text); in batch mode, "
                                    "the prompt of every clip instead of its cached caption")
    p.add_argument("--prompts", type=Path,
                   help="batch mode: each clip's prompt, by clip or recording id (JSON {id: prompt}, CSV id,caption, "
                        "TSV or a manifest), instead of its cached caption")
    p.add_argument("--captions", default=None,
                   help="batch mode: the cached captions to prompt with: manifest, generated:<kind> (written by "
                        "`expotion caption`, e.g. generated:music) or generic (default: the captions the checkpoint "
                        "was trained on, else manifest)")
    p.add_argument("--checkpoint", type=Path, help="exported checkpoint (adaptor.pt) of either method; omit for plain "
                                                   "MusicGen")
    p.add_argument("--musicgen", help=f"hub name or local dir (default: the checkpoint's, else {DEFAULT_MUSICGEN})")
    p.add_argument("--out", type=Path, help="output wav (single video)")
    p.add_argument("--mux", type=Path, help="also write this mp4: the original video stream plus the music as AAC")
    p.add_argument("--plot", action="store_true",
                   help="also write the clip's figure (motion speed with the music's onsets and beats) next to --out, "
                        "as a .png")
    p.add_argument("--out-dir", type=Path, help="batch mode: one <clip_id>.wav per clip")
    p.add_argument("--reference-dir", type=Path,
                   help="batch mode: also write each clip's original music here (the reference for `expotion eval`)")
    p.add_argument("--mux-dir", type=Path,
                   help="batch mode: also write <clip_id>.mp4 per clip here: its span of the source video, cut as "
                        "the cache cut it, with the generated music (for `expotion eval --videos`)")
    p.add_argument("--seed", type=opt.seed, default=0, help="random seed in [0, 2^63); in batch mode each clip "
                                                             "samples from its own seed, derived from this one and its id")
    p.add_argument("--batch-size", type=opt.positive_int, default=DEFAULT_BATCH_SIZE,
                   help="batch mode: clips per MusicGen call; a clip's music does not depend on it")
    p.add_argument("--devices", type=opt.positive_int, default=1,
                   help="batch mode: processes (GPUs with --device cuda) on this machine, through Lightning's DDP")
    p.add_argument("--num-nodes", type=opt.positive_int, default=1,
                   help="batch mode: machines, each running --devices processes")
    p.add_argument("--cfg", type=opt.non_negative_float, default=3.0,
                   help="classifier-free guidance coefficient on the conditions (the text; with a CLIP + flow "
                        "checkpoint, its video memory)")
    p.add_argument("--top-k", type=opt.positive_int, default=250, help="tokens sampled from (at least 1)")
    p.add_argument("--extend-stride", type=opt.positive_float, default=None,
                   help="seconds between windows for long videos, in (0, window) (default: half the generation window)")
    p.add_argument("--face-box", help="'x0 y0 x1 y1' in source pixels: a fixed face crop instead of detection "
                                      "(use the same box the training data used)")
    p.add_argument("--adaptor-dtype", choices=tuple(ADAPTOR_DTYPES), default="float32",
                   help="the trained conditioning's precision (MusicGen keeps its own: float32, with float16 autocast on CUDA)")


class ProgressBars:
    """The library's progress reports drawn as one tqdm bar per stage, each created with its total (so it shows an ETA)."""

    LABELS = {"faces": ("face scan", "window"), "features": ("video features", "window"),
              "generate": ("music", "step"), "clips": ("clips", "clip"), "videos": ("clip videos", "clip")}

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.LABELS:
            return
        bar = self.bars.get(stage)
        if bar is None or bar.total != total:
            desc, unit = self.LABELS[stage]
            bar = self.bars[stage] = tqdm(total=total, desc=desc, unit=unit, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[stage]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # libraries: warnings only
    logging.getLogger("expotion").setLevel(logging.INFO)
    start = getattr(args, "started", None) or time.perf_counter()  # set by the ``expotion`` entry point
    try:
        settings = ModelSettings(checkpoint=args.checkpoint, musicgen=args.musicgen, profile=args.profile,
                                 weights_dir=args.weights_dir, tiny_dir=args.tiny_dir,
                                 device=args.device, adaptor_dtype=args.adaptor_dtype)
        sampling = SamplingSettings(args.seed, args.cfg, args.top_k, args.extend_stride)
        generation_window.check_extend_stride(args.extend_stride, args.checkpoint, args.musicgen, DEFAULT_MUSICGEN)
        return run_single(args, settings, sampling, start) if args.video else run_batch(args, settings, sampling)
    except (GenerationError, OutputError, MediaError, ManifestError, MissingWeightsError, CheckpointError,
            CacheError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2


def run_single(args: argparse.Namespace, settings: ModelSettings, sampling: SamplingSettings, start: float) -> int:
    if args.out is None:
        raise GenerationError("--video needs --out")
    if args.prompts is not None:
        raise GenerationError("--prompts gives the prompts of a cached split's clips (--cache); for one video, "
                              "use --prompt")
    if args.captions is not None:
        raise GenerationError("--captions chooses the cached captions of a split's clips (--cache); for one video, "
                              "use --prompt")
    if args.prompt is not None or args.checkpoint is None:
        check_prompt(args.prompt or "")
    check_video_outputs(args.video, args.out, args.mux)
    face_box = parse_face_box(args.face_box, where="--face-box")
    progress = ProgressBars()
    before_load = time.perf_counter()
    models = load_models(settings, progress)
    result = generate_for_video(models, args.video, args.prompt, args.out, mux=args.mux, face_box=face_box,
                                sampling=sampling, progress=progress)
    stages = {"imports and checks": before_load - start, "loading models": models.load_s, **result.timings}
    seconds = sf.info(result.wav).duration
    print(f"wrote {result.wav} ({seconds:.2f} s for a {result.duration_s:.2f} s video, "
          f"{'checkpoint ' + str(args.checkpoint) if models.conditioning else 'plain MusicGen'})")
    print(f"took {time.perf_counter() - start:.1f} s from the command's start: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
    if result.mux:
        print(f"wrote {result.mux}")
    if args.plot:
        from expotion.evaluation.plots import save_clip_figure

        figure = save_clip_figure(args.video, result.wav, result.wav.with_suffix(".png"), f"{args.video.name}: {args.prompt}")
        print(f"wrote {figure}")
    return 0


def run_batch(args: argparse.Namespace, settings: ModelSettings, sampling: SamplingSettings) -> int:
    if args.out_dir is None:
        raise GenerationError("--cache needs --out-dir")
    if args.plot:
        raise GenerationError("--plot draws one video's figure; for a cached split use `expotion eval --plots`")
    check_batch_folders(args.out_dir, args.reference_dir)
    if args.prompt is not None:
        check_prompt(args.prompt)
    if args.prompts is not None and not args.prompts.is_file():
        raise GenerationError(f"--prompts {args.prompts}: file not found")
    prompts = Prompts(args.prompt, args.prompts, args.captions)
    progress = ProgressBars()
    if args.devices * args.num_nodes > 1:
        result = generate_on_devices(settings, args.cache, args.out_dir, devices=args.devices,
                                     num_nodes=args.num_nodes, reference_dir=args.reference_dir,
                                     mux_dir=args.mux_dir, sampling=sampling, batch_size=args.batch_size,
                                     prompts=prompts, progress=progress)
        if result is None:  # not global rank 0: rank 0 reports for every process
            return 0
    else:
        models = load_models(settings, progress)
        result = generate_for_cache(models, args.cache, args.out_dir, reference_dir=args.reference_dir,
                                    mux_dir=args.mux_dir, sampling=sampling, batch_size=args.batch_size,
                                    prompts=prompts, progress=progress)
    summary = write_batch_summary(Path(args.out_dir) / "summary.json", result, settings, sampling, args)
    print(f"generated {len(result.written)} of {result.clips} clips into {args.out_dir} in {result.batches} batches "
          f"of up to {args.batch_size} on {result.processes} process{'es' if result.processes > 1 else ''}"
          + (f" (references in {args.reference_dir})" if args.reference_dir else ""))
    for clip_id, reason in result.skipped:
        print(f"  skipped {clip_id}: {reason}")
    if args.mux_dir:
        print(f"wrote {len(result.videos)} of {len(result.written)} clip videos into {args.mux_dir}")
        for clip_id, reason in result.videos_skipped:
            print(f"  no video for {clip_id}: {reason}")
    print(f"prompts: {describe_prompts(result.captions)}")
    print(f"summary: {summary}")
    return 0 if result.written else 1


def describe_prompts(choice: dict) -> str:
    """One line saying which prompts batch mode used and what chose them."""
    why = {"checkpoint": "the captions the checkpoint was trained on", "default": "the default",
           "--captions": "--captions"}
    source, chosen_by = choice.get("source"), choice.get("chosen_by")
    if source is None:
        return f"given by {chosen_by}"
    what = f"the generic prompt {GENERIC_PROMPT!r}" if source == GENERIC else f"the cache's {source} captions"
    return f"{what} ({why.get(chosen_by, chosen_by)})"


def write_batch_summary(path: Path, result: BatchResult, settings: ModelSettings, sampling: SamplingSettings,
                        args: argparse.Namespace) -> Path:
    """``summary.json`` beside the wavs: what was generated from what, with which settings, and what was skipped."""
    summary = {
        "cache": str(args.cache), "checkpoint": str(settings.checkpoint) if settings.checkpoint else None,
        "musicgen": settings.musicgen, "profile": settings.profile, "adaptor_dtype": settings.adaptor_dtype,
        "sampling": asdict(sampling), "clip_seed": "sha256('{seed}:{clip_id}'), first 8 bytes little-endian >> 1",
        "batch_size": args.batch_size, "processes": result.processes, "devices": result.devices,
        "batches": result.batches,
        "clips": result.clips, "written": result.written, "skipped": dict(result.skipped),
        "references": str(args.reference_dir) if args.reference_dir else None,
        "videos": result.videos if args.mux_dir else None, "videos_skipped": dict(result.videos_skipped),
        "captions": result.captions, "prompts": result.prompts,
        "seconds": {stage: round(seconds, 3) for stage, seconds in result.timings.items()},
    }
    return write_text(path, json.dumps(summary, indent=2) + "\n")
