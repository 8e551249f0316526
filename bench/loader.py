"""P3: samples/s the cache loader delivers against samples/s a training step consumes,
and a count of text-encoder calls during training steps (it must be zero).

Runs the demo's tiny profile on a freshly synthesised dataset of 10 s clips.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/loader.py [--recordings 8 --workers 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import ConcatDataset, DataLoader  # noqa: E402

from expotion.core.tiny import PRECOMPUTE, make_tiny
from expotion.data.clips import ClipDataset, collate, visual_names
from expotion.demo.synth import synthesize_demo
from expotion.extractors.bank import tiny_profile
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.methods.expotion.module import adapted_predictions
from expotion.musicgen.loading import load_musicgen
from expotion.musicgen.objective import codebook_cross_entropy
from expotion.precompute.pipeline import PrecomputeConfig, run

STREAMS = ("marlin", "synchformer")


def loader_rate(dataset: ClipDataset, batch: int, workers: int, copies: int = 40) -> float:
    """Steady-state samples/s over ``copies`` passes of the cache (a real cache has thousands of clips)."""
    loader = DataLoader(ConcatDataset([dataset] * copies), batch_size=batch, shuffle=True, num_workers=workers,
                        collate_fn=collate)
    batches = iter(loader)
    next(batches)  # start the workers
    start, n = time.perf_counter(), 0
    for b in batches:
        n += b["codes"].shape[0]
    return n / (time.perf_counter() - start)


class CallCounter:
    """Counts forward calls of a module (here: MusicGen's text conditioner)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self.count)

    def count(self, *_: object) -> None:
        self.calls += 1


def step_rate(mg, dataset: ClipDataset, batch: int, steps: int) -> tuple[float, int, int]:
    """Samples/s of training steps, and text-conditioner calls during them and during one direct call."""
    lm = mg.lm
    cfg = AdaptorConfig(n_adapted=2, visual=VisualConfig(face=True, motion="synchformer"), max_seconds=10.0)
    adaptor = ConditionAdaptor(lm, cfg, dataset.spec.dims, 50.0)
    optimizer = torch.optim.AdamW(adaptor.parameters(), lr=1e-3)
    batches = [collate([dataset[(i * batch + j) % len(dataset)] for j in range(batch)]) for i in range(steps)]
    counter = CallCounter(lm.condition_provider.conditioners["description"])
    lm.train()
    start = time.perf_counter()
    for i, b in enumerate([batches[0], *batches]):
        if i == 1:  # the first pass is a warm-up
            start = time.perf_counter()
        out = adapted_predictions(lm, adaptor, {k: b[k] for k in visual_names(STREAMS)}, dataset.spec.rates, b)
        loss, _, _ = codebook_cross_entropy(out.logits, b["codes"], out.mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    rate = steps * batch / (time.perf_counter() - start)
    during = counter.calls
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm.condition_provider(lm.condition_provider.tokenize([ConditioningAttributes(text={"description": "x"})]))
    counter.handle.remove()
    return rate, during, counter.calls - during


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = synthesize_demo(work / "data", n_recordings=args.recordings, n_val=0)
        make_tiny(work / "tiny", PRECOMPUTE)
        ext = tiny_profile(work / "tiny")
        run(PrecomputeConfig(manifest=manifest, cache=work / "cache", extractors=ext, workers=2))
        dataset = ClipDataset(work / "cache" / "train", STREAMS, crop_seconds=10.0, random_crop=True)
        loaded = {w: loader_rate(dataset, args.batch, w) for w in (0, 2)}
        consumed, t5_calls, direct_calls = step_rate(load_musicgen(ext.musicgen), dataset, args.batch, args.steps)
    print(f"training step (tiny demo model, batch {args.batch}, 10 s clips): {consumed:.1f} samples/s")
    for workers, rate in loaded.items():
        print(f"cache loader, {workers} worker processes: {rate:.1f} samples/s -> {rate / consumed:.1f}x the step "
              "(goal >= 20x)")
    print(f"text-conditioner calls during {args.steps} training steps: {t5_calls} "
          f"(the counter sees a direct call: {direct_calls})")


if __name__ == "__main__":
    main()
