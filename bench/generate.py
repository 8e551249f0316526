"""P1: generation time with the adaptor against plain MusicGen: same model, length, CFG and seed.
With ``--batch-sizes``: clips per second of batch mode at each batch size instead.

The runs are timed alternately in one run, so machine load affects them alike.
The model is a random MusicGen in the released format (loaded through
``MusicGen.get_pretrained``); the adaptor adapts ``--adapted`` of its layers.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generate.py [--layers 12 --dim 256 --seconds 10 --adapted 12]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generate.py --batch-sizes 1,4,8 [--layers 12 --dim 256 --seconds 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from common import model_arguments, random_musicgen, trained_adaptor  # noqa: E402

from expotion.generation import decode_audio, generate_tokens  # noqa: E402
from expotion.rates import DEFAULT_RATES as R  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(parser, layers=12)
    parser.add_argument("--adapted", type=int, default=None, help="adapted layers (default: all)")
    parser.add_argument("--batch-sizes", default=None,
                        help="e.g. 1,4,8: clips/s of batch mode at each size, on the CPU (and on CUDA when present)")
    args = parser.parse_args()
    if args.batch_sizes:
        for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            batch_throughput(args, [int(b) for b in args.batch_sizes.split(",")], device)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mg = random_musicgen(args.layers, args.dim, device, card=1024)
    adapted = args.adapted or args.layers
    adaptor = trained_adaptor(mg.lm, adapted, args.seconds, device)
    feats = {"marlin": torch.randn(1, R.marlin_windows(args.seconds), 768, device=device),
             "synchformer": torch.randn(1, R.synchformer_tokens(args.seconds), 768, device=device)}
    rates = {"marlin": R.marlin, "synchformer": R.synchformer}

    def plain() -> None:
        generate_tokens(mg, ["upbeat pop"], args.seconds, seed=0)

    def adapted_run() -> None:
        generate_tokens(mg, ["upbeat pop"], args.seconds, adaptor, feats, rates, seed=0)

    times: dict[str, list[float]] = {"plain": [], "adaptor": []}
    plain(), adapted_run()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("adaptor", adapted_run)):
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    t_plain, t_adapted = statistics.median(times["plain"]), statistics.median(times["adaptor"])
    print(f"MusicGen N={args.layers} layers, dim {args.dim}, {adapted} adapted; {args.seconds:g} s, CFG 3.0, on {device}")
    print(f"  plain MusicGen: {t_plain:.2f} s   with adaptor: {t_adapted:.2f} s")
    print(f"  ratio adaptor / plain: {t_adapted / t_plain:.3f}x (goal <= 1.10x)")


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"min {low} / median {mid} / max {high}"


def batch_throughput(args: argparse.Namespace, sizes: list[int], device: str) -> None:
    """Clips/s of batch mode's work per batch: one ``generate_tokens`` call for B clips (each its own caption,
    video features and seed, all layers adapted), then each clip's EnCodec decode, as ``expotion generate --cache``
    does it."""
    mg = random_musicgen(args.layers, args.dim, device, card=1024)
    adaptor = trained_adaptor(mg.lm, args.adapted or args.layers, args.seconds, device)
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
