"""``expotion caption``: a generated caption for every cached clip, stored with the clip in the cache.

    expotion caption --cache cache/demo [--split train] [--captioner music|scene|flamingo|fused] [--prompt "..."]
                     [--model-path DIR] [--weights-dir DIR] [--batch-size 4] [--device cuda]
                     [--max-new-tokens 200] [--do-sample --temperature 1.0 --top-p 1.0] [--seed 0]

Each clip's own span (audio, and frames for ``fused``) is cut from the source
recording its shard names. Interrupting is safe, and a rerun captions only the
clips that lack a caption of the kind or whose caption was made with another
model, prompt or settings; with nothing to do it writes nothing. Training,
generation and eval read these captions with ``generated:<kind>`` (see
``docs/captions.md``).

Exit status: 0 when every clip has its caption, 1 when some were skipped (each
named with its reason), 2 for unusable arguments, cache or weights.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from expotion.captioners.base import GenerationSettings, KINDS
from expotion.core import option_types as opt
from expotion.core.weights import MissingWeightsError
from expotion.data.shards import CacheError
from expotion.precompute.captions import SUMMARY_NAME, CaptionConfig, run as run_stage

DEFAULTS = GenerationSettings()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, required=True, help="the feature cache (<cache>/<split>/shard-NNNNN.h5)")
    p.add_argument("--split", default=None, help="caption only this split (default: every split)")
    p.add_argument("--captioner", choices=tuple(KINDS), default="music",
                   help="music: the paper's captions from the audio (Qwen2-Audio); flamingo: the same question to "
                        "Audio Flamingo 3; scene: the scene the music evokes; fused: from the video and audio "
                        "together (default: music)")
    p.add_argument("--prompt", default=None, help="the question asked of every clip (default: the captioner's own, "
                                                  "e.g. 'Please describe the music.')")
    p.add_argument("--model-path", type=Path, default=None,
                   help="the model's folder (default: under --weights-dir, else the Hugging Face cache)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="where the source recordings are now (default: the data root each shard records)")
    p.add_argument("--batch-size", type=opt.positive_int, default=4, help="clips per generation call (default 4)")
    p.add_argument("--max-new-tokens", type=opt.positive_int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=opt.positive_float, default=DEFAULTS.temperature)
    p.add_argument("--top-p", type=opt.positive_float, default=DEFAULTS.top_p)
    p.add_argument("--seed", type=opt.seed, default=DEFAULTS.seed)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    settings = GenerationSettings(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.seed)
    try:
        cfg = CaptionConfig(cache=args.cache, kind=args.captioner, split=args.split, model_path=args.model_path,
                            weights_dir=args.weights_dir, prompt=args.prompt, settings=settings,
                            batch_size=args.batch_size, device=args.device, data_root=args.data_root)
        summary = run_stage(cfg)
    except (CacheError, MissingWeightsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.report())
    if summary.written or summary.skipped:
        print(f"summary: {args.cache / SUMMARY_NAME}")
    return 1 if summary.skipped else 0
