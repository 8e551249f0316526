"""Generate music for a video (written as a 32 kHz wav, optionally muxed into the video), or for every
clip of a cached split (batch mode, one wav per clip id, for evaluation).

    expotion generate --video V.mp4 --prompt "..." [--checkpoint adaptor.pt] [--musicgen DIR|NAME]
                      --out out.wav [--mux out.mp4] [--seed S] [--cfg 3.0] [--top-k 250]
    expotion generate --cache cache/demo/val --out-dir outputs/val [--checkpoint adaptor.pt]

Without --checkpoint this is plain text-only MusicGen (the paper's baseline row).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from .checkpoint import CheckpointMismatch, build_adaptor, read_adaptor
from .data import FeatureSpec, read_clips
from .features import Extractors, real_profile, tiny_profile
from .generation import GenerationError, check_prompt, decode_audio, generate_tokens
from .manifest import ManifestError, parse_face_box
from .media import MediaError, has_video_frames, iter_clip_frames, mux_audio, probe_video, read_music
from .musicgen import load_musicgen, model_signature
from .weights import MissingWeightsError

log = logging.getLogger("expotion.generate")
DEFAULT_MUSICGEN = "facebook/musicgen-small"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="a face/upper-body video")
    src.add_argument("--cache", type=Path, help="batch mode: a cached split directory, e.g. cache/demo/val")
    p.add_argument("--prompt", help="text prompt (single video)")
    p.add_argument("--checkpoint", type=Path, help="adaptor checkpoint (adaptor.pt); omit for plain MusicGen")
    p.add_argument("--musicgen", help=f"hub name or local dir (default: the checkpoint's, else {DEFAULT_MUSICGEN})")
    p.add_argument("--out", type=Path, help="output wav (single video)")
    p.add_argument("--mux", type=Path, help="also write this mp4: the original video stream plus the music as AAC")
    p.add_argument("--out-dir", type=Path, help="batch mode: one <clip_id>.wav per clip")
    p.add_argument("--reference-dir", type=Path,
                   help="batch mode: also write each clip's original music here (the reference for `expotion eval`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient on the text")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--extend-stride", type=float, default=None,
                   help="seconds between windows for long videos (default: half the adaptor's window)")
    p.add_argument("--face-box", help="'x0 y0 x1 y1' in source pixels: a fixed face crop instead of detection "
                                      "(use the same box the training data used)")
    p.add_argument("--profile", choices=("real", "tiny"), default="real", help="feature extractors (as for precompute)")
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--tiny-dir", type=Path, default=Path("cache/tiny-weights"))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return single(args) if args.video else batch(args)
    except (GenerationError, MediaError, ManifestError, MissingWeightsError, CheckpointMismatch, FileNotFoundError) as err:
        log.error("%s", err)
        return 2


def load_models(args: argparse.Namespace):
    """MusicGen, and the adaptor with the feature spec it expects (None without a checkpoint)."""
    if args.checkpoint is None:
        return load_musicgen(args.musicgen or DEFAULT_MUSICGEN), None, None
    payload = read_adaptor(args.checkpoint)
    musicgen = load_musicgen(args.musicgen or payload["musicgen"]["name"])
    adaptor, spec = build_adaptor(args.checkpoint, payload, musicgen.lm, model_signature(musicgen))
    return musicgen, adaptor.eval(), spec


def video_features(args: argparse.Namespace, video: Path, duration: float, spec: FeatureSpec) -> dict[str, torch.Tensor]:
    """The same extractors as the precompute stage, over the whole video; checked against the checkpoint."""
    ext_cfg = tiny_profile(args.tiny_dir) if args.profile == "tiny" else real_profile(args.weights_dir)
    extractors = Extractors(ext_cfg, tuple(spec.shapes))
    (_, frames), = iter_clip_frames(video, [(0.0, duration)], ext_cfg.max_short_side)
    if isinstance(frames, MediaError):
        raise frames
    face_box = parse_face_box(args.face_box, where="--face-box")
    feats = extractors.video_features(frames, duration, face_box)
    for note in feats.notes:
        if note.startswith("no face detected"):
            log.warning("%s: no face detected: the face features are masked, so the adaptor uses its learned "
                        "'no face' embedding and the motion and text conditions steer the music", video)
        else:
            log.warning("%s: %s", video, note)
    for name, shape in spec.shapes.items():
        got = tuple(feats.arrays[name].shape[1:])
        if got != shape:
            raise CheckpointMismatch(f"{args.checkpoint}: adaptor expects '{name}' features of shape {shape}, the "
                                     f"'{args.profile}' extractors give {got}; use the profile it was trained with")
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32 if v.dtype != bool else bool))[None]
            for k, v in feats.arrays.items()}


def single(args: argparse.Namespace) -> int:
    if args.out is None or args.prompt is None:
        raise GenerationError("--video needs --prompt and --out")
    prompt = check_prompt(args.prompt)
    if not has_video_frames(args.video):
        raise GenerationError(f"{args.video}: the video has no frames to follow")
    info = probe_video(args.video)
    musicgen, adaptor, spec = load_models(args)
    feats = video_features(args, args.video, info.duration_s, spec) if adaptor is not None else None
    start = time.perf_counter()
    with tqdm(desc="generate", unit="step") as bar:
        musicgen.set_custom_progress_callback(progress_to(bar))
        tokens = generate_tokens(musicgen, [prompt], info.duration_s, adaptor, feats, spec.rates if spec else None,
                                 seed=args.seed, cfg_coef=args.cfg, top_k=args.top_k,
                                 extend_stride=args.extend_stride, progress=True)
    wav = decode_audio(musicgen, tokens, info.duration_s)[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.out, wav, musicgen.sample_rate)
    print(f"wrote {args.out} ({len(wav) / musicgen.sample_rate:.2f} s for a {info.duration_s:.2f} s video, "
          f"{'adaptor ' + str(args.checkpoint) if adaptor else 'plain MusicGen'}, {time.perf_counter() - start:.1f} s)")
    if args.mux:
        mux_audio(args.video, wav, musicgen.sample_rate, args.mux)
        print(f"wrote {args.mux}")
    return 0


def progress_to(bar: tqdm):
    """audiocraft progress callback (steps done, steps in this window) drawn on a tqdm bar."""

    def callback(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    return callback


def batch(args: argparse.Namespace) -> int:
    if args.out_dir is None:
        raise GenerationError("--cache needs --out-dir")
    musicgen, adaptor, spec = load_models(args)
    streams = tuple(spec.shapes) if spec else ()
    clips = list(read_clips(args.cache, streams))
    if not clips:
        raise GenerationError(f"{args.cache}: no cached clips")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.reference_dir:
        args.reference_dir.mkdir(parents=True, exist_ok=True)
    done, skipped = 0, []
    for clip in tqdm(clips, desc="generate", unit="clip"):
        if clip.missing:
            skipped.append((clip.clip_id, f"cache lacks {', '.join(clip.missing)}"))
            continue
        try:
            if args.reference_dir:
                write_reference(clip, args.reference_dir / f"{clip.clip_id}.wav", musicgen.sample_rate)
            tokens = generate_tokens(musicgen, [clip.caption], clip.duration_s, adaptor, clip.feats if adaptor else None,
                                     spec.rates if spec else None, seed=args.seed, cfg_coef=args.cfg,
                                     top_k=args.top_k, extend_stride=args.extend_stride)
        except (GenerationError, MediaError) as err:
            skipped.append((clip.clip_id, str(err)))
            continue
        wav = decode_audio(musicgen, tokens, clip.duration_s)[0]
        sf.write(args.out_dir / f"{clip.clip_id}.wav", wav, musicgen.sample_rate)
        done += 1
    print(f"generated {done} of {len(clips)} clips into {args.out_dir}"
          + (f" (references in {args.reference_dir})" if args.reference_dir else ""))
    for clip_id, reason in skipped:
        print(f"  skipped {clip_id}: {reason}")
    return 0 if done else 1


def write_reference(clip, path: Path, sample_rate: int) -> None:
    """The clip's original music, cut from its source as the precompute stage cut it."""
    audio = read_music(clip.source, clip.audio_source, sample_rate)
    start = int(round(clip.start_s * sample_rate))
    sf.write(path, audio[start : start + int(round(clip.duration_s * sample_rate))], sample_rate)
