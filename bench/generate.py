"""P1: generation time with the adaptor against plain MusicGen: same model, length, CFG and seed.
With ``--batch-sizes``: clips per second of batch mode at each batch size instead.

Plain MusicGen and one adaptor per ``--adapted`` setting are timed in turn,
repeat after repeat, so machine load affects them alike. The model is a random
MusicGen in the released format (loaded through ``MusicGen.get_pretrained``).
The gated prefix attention enters each adapted layer before its frozen output
projection, so its per-step cost is one query projection and one attention over
the prefix.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generate.py [--layers 12 --dim 256 --seconds 10 --adapted 12,3 --repeats 5]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generate.py --batch-sizes 1,4,8 [--layers 12 --dim 256 --seconds 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import model_arguments, random_musicgen, spread, trained_adaptor  # noqa: E402

from expotion.core.rates import DEFAULT_RATES as R
from expotion.musicgen.windows import decode_audio, generate_tokens

GOALS = {"all": 1.15, "quarter": 1.05}  # adaptor / plain with L = N and with L = N/4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(parser, layers=12)
    parser.add_argument("--adapted", default=None, help="comma-separated adapted-layer counts (default: N and N/4)")
    parser.add_argument("--batch-sizes", default=None,
                        help="e.g. 1,4,8: clips/s of batch mode at each size, on the CPU (and on CUDA when present)")
    args = parser.parse_args()
    if args.batch_sizes:
        for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            batch_throughput(args, [int(b) for b in args.batch_sizes.split(",")], device)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mg = random_musicgen(args.layers, args.dim, device, card=1024)
    counts = [int(c) for c in args.adapted.split(",")] if args.adapted else [args.layers, max(1, args.layers // 4)]
    feats = {"marlin": torch.randn(1, R.marlin_windows(args.seconds), 768, device=device),
             "synchformer": torch.randn(1, R.synchformer_tokens(args.seconds), 768, device=device)}
    rates = {"marlin": R.marlin, "synchformer": R.synchformer}
    runs = {"plain": lambda: generate_tokens(mg, ["upbeat pop"], args.seconds, seed=0)}
    for n in counts:
        adaptor = trained_adaptor(mg.lm, n, args.seconds, device)
        runs[f"L={n}"] = lambda a=adaptor: generate_tokens(mg, ["upbeat pop"], args.seconds, a, feats, rates, seed=0)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for repeat in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()), flush=True)

    print(f"MusicGen N={args.layers} layers, dim {args.dim}; {args.seconds:g} s, CFG 3.0, on {device}; "
          f"{args.repeats} interleaved repeats")
    print(f"  plain MusicGen: {spread(times['plain'], '{:.2f}')} s")
    for n in counts:
        name = f"L={n}"
        paired = [a / p for a, p in zip(times[name], times["plain"], strict=True)]
        goal = GOALS["all"] if n == args.layers else GOALS["quarter"] if n == args.layers // 4 else None
        print(f"  adaptor {name}: {spread(times[name], '{:.2f}')} s")
        print(f"    ratio adaptor / plain per repeat: {spread(paired)}"
              f"; of medians {statistics.median(times[name]) / statistics.median(times['plain']):.3f}x"
              + (f" (goal <= {goal:.2f}x)" if goal else ""))


def batch_throughput(args: argparse.Namespace, sizes: list[int], device: str) -> None:
    """Clips/s of batch mode's work per batch: one ``generate_tokens`` call for B clips (each its own caption,
    video features and seed, all layers adapted), then each clip's EnCodec decode, as ``expotion generate --cache``
    does it."""
    mg = random_musicgen(args.layers, args.dim, device, card=1024)
    adaptor = trained_adaptor(mg.lm, args.layers, args.seconds, device)
    rates = {"marlin": R.marlin, "synchformer": R.synchformer}
    captions = ["upbeat pop", "slow jazz", "calm piano", "loud rock"]

    def batch(size: int) -> None:
        feats = {"marlin": torch.randn(size, R.marlin_windows(args.seconds), 768, device=device),
                 "synchformer": torch.randn(size, R.synchformer_tokens(args.seconds), 768, device=device)}
        tokens = generate_tokens(mg, [captions[i % 4] for i in range(size)], args.seconds, adaptor, feats, rates,
                                 seed=list(range(size)))
        for row in range(size):
            decode_audio(mg, tokens[row : row + 1], args.seconds)

    clips_per_s: dict[int, list[float]] = {size: [] for size in sizes}
    batch(1)  # warm-up
    for _ in range(args.repeats):
        for size in sizes:
            start = time.perf_counter()
            batch(size)
            if device == "cuda":
                torch.cuda.synchronize()
            clips_per_s[size].append(size / (time.perf_counter() - start))
    print(f"batch mode, MusicGen N={args.layers} layers, dim {args.dim}, all adapted; {args.seconds:g} s clips, "
          f"CFG 3.0, on {device} ({torch.get_num_threads()} threads); {args.repeats} interleaved repeats")
    for size in sizes:
        paired = [b / one for b, one in zip(clips_per_s[size], clips_per_s[sizes[0]], strict=True)]
        print(f"  B={size}: clips/s {spread(clips_per_s[size])}; vs B={sizes[0]} per repeat {spread(paired, '{:.2f}')}x")


if __name__ == "__main__":
    main()
