"""P1: generation time with the adaptor against plain MusicGen: same model, length, CFG and seed.

The two are timed alternately in one run, so machine load affects both alike.
The model is a random MusicGen in the released format (loaded through
``MusicGen.get_pretrained``); the adaptor adapts ``--adapted`` of its layers.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generate.py [--layers 12 --dim 256 --seconds 10 --adapted 12]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from common import model_arguments, random_musicgen, trained_adaptor  # noqa: E402

from expotion.generation import generate_tokens  # noqa: E402
from expotion.rates import DEFAULT_RATES as R  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(parser, layers=12)
    parser.add_argument("--adapted", type=int, default=None, help="adapted layers (default: all)")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
