"""``expotion live``: music that follows a camera, or a video file played as one, written while it plays.

    expotion live --video V.mp4 --out live.wav [--log live.csv] [--as-fast-as-possible] [--checkpoint adaptor.pt]
                  [--prompt "..."] [--seed S] [--chunk 0.5] [--device cuda]
    expotion live --camera 0 --out live.wav [--duration 300]

The wav grows chunk by chunk (a player can open it at any moment); the log has one row per chunk: the video it
covers, when the last video it needed arrived, when it was ready, the latency between them and its parts. A model
trained without the causal option is conditioned on whole windows, so its music follows a window behind (the log
says so). With the same seed, the tokens are those ``expotion generate`` samples for the same video.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from expotion.core import option_types as opt
from expotion.core.atomic import atomic_path
from expotion.core.outputs import OutputError, same_file
from expotion.core.weights import MissingWeightsError
from expotion.data.media import MediaError
from expotion.inference.models import ADAPTOR_DTYPES, DEFAULT_MUSICGEN, ModelSettings, SamplingSettings, load_models
from expotion.live.camera import CameraError, DeviceCamera, FileCamera, open_camera
from expotion.live.outputs import ChunkTiming
from expotion.live.session import (DEFAULT_CHUNK_S, DEFAULT_MAX_DURATION_S, LiveSession, LiveSettings)
from expotion.musicgen.windows import GenerationError, check_prompt
from expotion.solvers.export import CheckpointError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="a video file, played as if it were a camera")
    src.add_argument("--camera", type=opt.non_negative_int, help="a local camera's index, read through PyAV")
    p.add_argument("--out", type=Path, required=True, help="the wav, growing as the session runs")
    p.add_argument("--log", type=Path, help="the latency log, CSV (default: beside --out, .latency.csv)")
    p.add_argument("--codes", type=Path, help="also save the generated codes (1, K, frames) here as .npy")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="--video: feed frames as fast as they decode instead of at the video's pace")
    p.add_argument("--duration", type=opt.positive_float, default=DEFAULT_MAX_DURATION_S,
                   help="--camera: seconds to run at most (Ctrl-C stops earlier and keeps the music)")
    p.add_argument("--chunk", type=opt.positive_float, default=DEFAULT_CHUNK_S, help="seconds of audio per chunk")
    p.add_argument("--prompt", help="text prompt (not needed by a model trained without text)")
    p.add_argument("--checkpoint", type=Path, help="exported checkpoint (adaptor.pt) of either method; omit for plain "
                                                   "MusicGen, which follows the camera's pace only")
    p.add_argument("--musicgen", help=f"hub name or local dir (default: the checkpoint's, else {DEFAULT_MUSICGEN})")
    p.add_argument("--seed", type=opt.seed, default=0, help="random seed in [0, 2^63)")
    p.add_argument("--cfg", type=opt.non_negative_float, default=3.0, help="classifier-free guidance coefficient")
    p.add_argument("--top-k", type=opt.positive_int, default=250, help="tokens sampled from (at least 1)")
    p.add_argument("--extend-stride", type=opt.positive_float, default=None,
                   help="seconds between windows, in (0, window) (default: half the generation window)")
    p.add_argument("--adaptor-dtype", choices=tuple(ADAPTOR_DTYPES), default="float32",
                   help="the trained conditioning's precision")


def check_outputs(args: argparse.Namespace) -> Path:
    """The log's path; refuse outputs that would overwrite the input or each other, or land in a missing folder."""
    log_path = args.log or args.out.with_suffix(".latency.csv")
    outputs = {"--out": args.out, "--log": log_path, **({"--codes": args.codes} if args.codes else {})}
    for flag, path in outputs.items():
        if args.video is not None and same_file(path, args.video):
            raise OutputError(f"{flag} {path} is the input video")
        if not path.parent.is_dir():
            raise OutputError(f"{flag} {path}: folder {path.parent} does not exist")
    if len({p.resolve() for p in outputs.values()}) < len(outputs):
        raise OutputError(f"{', '.join(outputs)} must be different files")
    return log_path


def print_chunk(row: ChunkTiming) -> None:
    print(f"chunk {row.chunk}: video {row.video_start_s:.2f}-{row.video_end_s:.2f} s, latency {row.latency_s:.2f} s",
          flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("expotion").setLevel(logging.INFO)
    try:
        log_path = check_outputs(args)
        if args.prompt is not None or args.checkpoint is None:
            check_prompt(args.prompt or "")
        settings = ModelSettings(checkpoint=args.checkpoint, musicgen=args.musicgen, profile=args.profile,
                                 weights_dir=args.weights_dir, tiny_dir=args.tiny_dir, device=args.device,
                                 adaptor_dtype=args.adaptor_dtype)
        live = LiveSettings(chunk_s=args.chunk, max_duration_s=args.duration)
        if args.camera is not None:
            open_camera(args.camera).close()  # no camera: say so before any model loads
        models = load_models(settings)
        side = models.extractor_cfg.max_short_side
        camera = (FileCamera(args.video, side, args.as_fast_as_possible) if args.video is not None
                  else DeviceCamera(args.camera, side))
        session = LiveSession(models, camera, args.prompt, SamplingSettings(args.seed, args.cfg, args.top_k,
                                                                            args.extend_stride), live, print_chunk)
        result = session.run(args.out, log_path)
    except (GenerationError, OutputError, MediaError, CameraError, MissingWeightsError, CheckpointError,
            FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    if args.codes is not None:
        with atomic_path(args.codes) as tmp, open(tmp, "wb") as f:
            np.save(f, result.codes.numpy())
    latencies = [row.latency_s for row in result.chunks]
    speed = result.duration_s / result.wall_s if result.wall_s else float("nan")
    print(f"wrote {result.wav} ({result.duration_s:.2f} s of music in {result.wall_s:.1f} s, "
          f"{speed:.2f} x real time{', stopped early' if result.stopped else ''}) and {result.log}")
    if latencies:
        print(f"latency: median {np.median(latencies):.2f} s, max {max(latencies):.2f} s over {len(latencies)} chunks")
    return 0
