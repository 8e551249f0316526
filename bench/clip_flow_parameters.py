"""Parameter counts behind the CLIP + flow defaults: MusicGen's decoders, CLIP ViT-B/32 and the conditioner.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/clip_flow_parameters.py

Every model is built on the ``meta`` device (no weights, no memory): MusicGen small and medium by audiocraft's
builder at the released sizes (``gpu_memory.build_lm``), CLIP's vision tower from transformers' default
``CLIPVisionConfig`` (ViT-B/32), and ``ClipFlowConditioner`` at its defaults on the released feature shapes. The
decoder is what ``decoder: all`` trains (every LM parameter but the condition encoders); the export's size is
those parameters and the conditioner's in float32. Counts, not timings: they do not depend on the machine.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import CLIP_DIM, CLIP_TOKENS, FLOW_MAP  # noqa: E402
from gpu_memory import SIZES, build_lm, count  # noqa: E402

from expotion.methods.clipflow.conditioner import ClipFlowConditioner, ClipFlowConfig
from expotion.methods.clipflow.memory import trained_decoder


def numel(params) -> int:
    return sum(p.numel() for p in params)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    from transformers import CLIPVisionConfig, CLIPVisionModel

    decoders = {}
    for size in ("small", "medium"):
        lm = build_lm(*SIZES[size])
        decoder = trained_decoder(lm, "all", "none")
        cross = trained_decoder(lm, "cross_attention", "none")
        decoders[size] = numel(decoder.values())
        print(f"MusicGen {size} decoder: {decoders[size] / 1e6:.1f}M with cross-attention, "
              f"{(decoders[size] - numel(cross.values())) / 1e6:.1f}M without")
        if size == "small":
            with torch.device("meta"):
                conditioner = ClipFlowConditioner(ClipFlowConfig(), {"clip": (CLIP_TOKENS, CLIP_DIM),
                                                                     "farneback": FLOW_MAP}, lm.dim, 50.0)
    with torch.device("meta"):
        clip = CLIPVisionModel(CLIPVisionConfig())
    cond = count(conditioner)
    print(f"CLIP ViT-B/32 vision tower: {count(clip) / 1e6:.1f}M")
    print(f"CLIP + flow conditioner (defaults, MusicGen small's width): {cond / 1e6:.1f}M")
    print(f"decoder of MusicGen small + conditioner: {(decoders['small'] + cond) / 1e6:.1f}M")
    print(f"export with decoder: all on MusicGen small (float32): decoder {4 * decoders['small'] / 1e9:.2f} GB, "
          f"with the conditioner {4 * (decoders['small'] + cond) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
